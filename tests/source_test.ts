import assert from "node:assert/strict";

// Hygiene of what `mod.ts` reaches: the library must run unchanged on Deno,
// Deno Deploy, Bun, Node and edge runtimes, and measure time only with the
// monotonic clock (F23: client wall-clock jumps must change nothing).

const root = new URL("../", import.meta.url);

/** The library's source files, relative to the repository root. */
async function sourceFiles(): Promise<string[]> {
  const files = ["mod.ts"];
  const walk = async (dir: string) => {
    for await (const entry of Deno.readDir(new URL(dir, root))) {
      const path = `${dir}${entry.name}`;
      if (entry.isDirectory) await walk(`${path}/`);
      else if (path.endsWith(".ts")) files.push(path);
    }
  };
  await walk("src/");
  return files.sort();
}

/** A file's text without comments, and without comments and string contents. */
interface Stripped {
  /** Comments removed, strings kept: for import specifiers. */
  withStrings: string;
  /** Comments removed and string, template and regex contents blanked: code only. */
  code: string;
}

// A `/` after one of these (or at the start) begins a regex literal, not a
// division; good enough for this codebase's style.
const BEFORE_REGEX =
  /(?:^|[(,=:[!&|?{};+\-*%<>~^]|\breturn|\btypeof|\bcase)\s*$/;

/** Strips comments (and, for `code`, the contents of literals) from TypeScript. */
function strip(source: string): Stripped {
  let withStrings = "", code = "";
  const emit = (kept: string, blanked = kept) => {
    withStrings += kept;
    code += blanked;
  };
  // Brace depth of each open `${` inside a template literal.
  const templates: number[] = [];
  let i = 0;
  const readQuoted = (quote: string): string => {
    let j = i + 1;
    while (j < source.length && source[j] !== quote) {
      j += source[j] === "\\" ? 2 : 1;
    }
    return source.slice(i, j + 1);
  };
  const readTemplateText = (): void => {
    // From just after "`" or "}" up to "${" or the closing "`".
    let j = i;
    while (j < source.length && source[j] !== "`") {
      if (source[j] === "\\") j += 2;
      else if (source[j] === "$" && source[j + 1] === "{") break;
      else j++;
    }
    const text = source.slice(i, j);
    emit(text, text.replace(/[^\n]/g, " "));
    if (source[j] === "`") {
      emit("`");
      i = j + 1;
    } else {
      emit("${");
      templates.push(0);
      i = j + 2;
    }
  };
  while (i < source.length) {
    const c = source[i], next = source[i + 1];
    if (c === "/" && next === "/") {
      while (i < source.length && source[i] !== "\n") i++;
    } else if (c === "/" && next === "*") {
      const end = source.indexOf("*/", i + 2);
      const comment = source.slice(i, end + 2);
      emit(comment.replace(/[^\n]/g, ""));
      i = end + 2;
    } else if (c === "'" || c === '"') {
      const literal = readQuoted(c);
      emit(literal, `${c}${c}`);
      i += literal.length;
    } else if (c === "`") {
      emit("`");
      i++;
      readTemplateText();
    } else if (c === "/" && BEFORE_REGEX.test(code)) {
      let j = i + 1, inClass = false;
      while (j < source.length && (inClass || source[j] !== "/")) {
        if (source[j] === "\\") j++;
        else if (source[j] === "[") inClass = true;
        else if (source[j] === "]") inClass = false;
        j++;
      }
      emit(source.slice(i, j + 1), "/ /");
      i = j + 1;
    } else if (c === "{" && templates.length > 0) {
      templates[templates.length - 1]++;
      emit(c);
      i++;
    } else if (c === "}" && templates.length > 0) {
      if (templates[templates.length - 1]-- === 0) {
        templates.pop();
        emit("}");
        i++;
        readTemplateText();
      } else {
        emit(c);
        i++;
      }
    } else {
      emit(c);
      i++;
    }
  }
  return { withStrings, code };
}

/** Every module specifier of static, type-only, re-export and dynamic imports. */
function specifiers(withStrings: string): string[] {
  const patterns = [
    /\b(?:import|export)\b[^;'"`]*?\bfrom\s*(["'])([^"']*)\1/g,
    /\bimport\s*(["'])([^"']*)\1/g,
    /\bimport\s*\(\s*(["'`])([^"'`]*)\1/g,
  ];
  return patterns.flatMap((pattern) =>
    [...withStrings.matchAll(pattern)].map((match) => match[2])
  );
}

/** The library's files, each stripped. */
async function library(): Promise<Map<string, Stripped>> {
  const files = new Map<string, Stripped>();
  for (const path of await sourceFiles()) {
    files.set(path, strip(await Deno.readTextFile(new URL(path, root))));
  }
  return files;
}

/** The lines of `text` that match `pattern`, as "path:line: text". */
function offending(path: string, text: string, pattern: RegExp): string[] {
  return text.split("\n").flatMap((line, index) =>
    pattern.test(line) ? [`${path}:${index + 1}: ${line.trim()}`] : []
  );
}

Deno.test("the source stripper keeps code and drops comments and literals", async () => {
  const { code, withStrings } = strip(
    [
      "// Date.now() in a comment",
      "/* new Date() */ const a = performance.now();",
      'const b = "Deno.env" + `x${Date.now() + "y"}z`;',
      "const c = /[/'\"]Deno\\./u.test(b) ? 1 / 2 : 3; // 'x",
      'import { d } from "./d.ts";',
    ].join("\n"),
  );
  assert.equal(code.split("\n").length, 5);
  assert.doesNotMatch(code, /comment|new Date|Deno|x\$|"y"/);
  assert.match(code, /performance\.now\(\)/);
  assert.match(code, /\$\{Date\.now\(\) \+ ""\}/);
  assert.match(code, /1 \/ 2 : 3; *$/m);
  assert.deepEqual(specifiers(withStrings), ["./d.ts"]);
  // On the real files it keeps every line, so reports point at the source.
  for (const path of await sourceFiles()) {
    const source = await Deno.readTextFile(new URL(path, root));
    const stripped = strip(source);
    assert.equal(stripped.code.split("\n").length, source.split("\n").length);
    assert.match(stripped.code, /\bexport\b/, path);
  }
});

Deno.test("the library reads no wall clock: no Date.now() and no new Date() (F23)", async () => {
  const files = await library();
  assert.ok(files.has("src/lock.ts") && files.has("src/_timers.ts"));
  const found = [...files].flatMap(([path, { code }]) =>
    offending(path, code, /\bDate\s*\.\s*now\b|\bnew\s+Date\b|\bDate\s*\(/)
  );
  assert.deepEqual(found, []);
  // Durations come from the monotonic clock, read in one place.
  assert.match(files.get("src/_timers.ts")!.code, /\bperformance\.now\(\)/);
});

Deno.test("every import of the library is relative with a .ts extension, never node:, npm:, jsr: or https:", async () => {
  const files = await library();
  let count = 0;
  for (const [path, { withStrings }] of files) {
    for (const specifier of specifiers(withStrings)) {
      count++;
      assert.doesNotMatch(
        specifier,
        /^(?:node|npm|jsr|https?|data|file):/,
        `${path} imports ${specifier}`,
      );
      assert.match(
        specifier,
        /^\.\.?\/[^:]*\.ts$/,
        `${path} imports ${specifier}, not a relative .ts path`,
      );
    }
  }
  // mod.ts re-exports from src/, and the lock imports its parts.
  const fromMod = specifiers(files.get("mod.ts")!.withStrings);
  assert.ok(fromMod.includes("./src/lock.ts"), fromMod.join(", "));
  assert.ok(count >= 10, `only ${count} imports found`);
});

Deno.test("the library touches no Deno namespace: only _deadlines.ts feature-detects Deno through globalThis", async () => {
  const files = await library();
  const access = [...files].flatMap(([path, { code }]) =>
    offending(path, code, /\bDeno\s*(?:\?\.|\.|\[)/)
  );
  assert.deepEqual(access, []);
  const mentions = [...files].flatMap(([path, { code }]) =>
    path === "src/_deadlines.ts" ? [] : offending(path, code, /\bDeno\b/)
  );
  assert.deepEqual(mentions, []);
  assert.match(
    files.get("src/_deadlines.ts")!.code,
    /\(globalThis as [^;]*\)\.Deno\b/,
  );
});

Deno.test("the library declares nothing with using or await using", async () => {
  const files = await library();
  const found = [...files].flatMap(([path, { code }]) =>
    offending(path, code, /(?:^|[^.\w$])(?:await\s+)?using\s+[\p{L}_$]/u)
  );
  assert.deepEqual(found, []);
});

Deno.test("the library uses no API that Node 20 lacks (Promise.withResolvers)", async () => {
  const files = await library();
  const found = [...files].flatMap(([path, { code }]) =>
    offending(path, code, /\bwithResolvers\b/)
  );
  assert.deepEqual(found, []);
});

Deno.test("the command is an application on the library: cli/ imports the library only through mod.ts", async () => {
  const found: string[] = [];
  for await (const entry of Deno.readDir(new URL("cli/", root))) {
    if (!entry.name.endsWith(".ts")) continue;
    const path = `cli/${entry.name}`;
    const text = await Deno.readTextFile(new URL(path, root));
    const { withStrings } = strip(text);
    for (const specifier of specifiers(withStrings)) {
      if (specifier.startsWith("../") && specifier !== "../mod.ts") {
        found.push(`${path}: ${specifier}`);
      }
    }
  }
  assert.deepEqual(found, []);
});

Deno.test("the version telemetry reports is deno.json's", async () => {
  const { VERSION } = await import("../src/_version.ts");
  const denoJson = JSON.parse(
    await Deno.readTextFile(new URL("deno.json", root)),
  );
  assert.equal(VERSION, denoJson.version);
});
