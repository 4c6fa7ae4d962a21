// Input checks, all run before any Redis command so bad input leaves nothing
// behind. Messages follow one form: "<action> as '<option>' must be
// <requirement>: current value is <value>".

/** The longest name or prefix, in UTF-8 bytes, so keys stay reasonable. */
export const MAX_KEY_PART_BYTES = 1024;
/** The longest delay a timer can take: setTimeout fires at once past it. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

const encoder = new TextEncoder();

function show(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "symbol") return value.toString();
  if (typeof value === "function") return "a function";
  if (Array.isArray(value)) return "an array";
  if (value !== null && typeof value === "object") {
    return `an object (${value.constructor?.name ?? "no prototype"})`;
  }
  return String(value);
}

function fail(
  ErrorType: TypeErrorConstructor | RangeErrorConstructor,
  action: string,
  option: string,
  requirement: string,
  value: unknown,
): never {
  throw new ErrorType(
    `${action} as '${option}' must be ${requirement}: current value is ${
      show(value)
    }`,
  );
}

/** Rejects option keys that are not in `allowed` (a typo must not silently disable safety). */
export function checkOptionKeys(
  action: string,
  options: unknown,
  allowed: readonly string[],
): void {
  if (options === undefined) return;
  if (
    typeof options !== "object" || options === null || Array.isArray(options)
  ) {
    fail(TypeError, action, "options", "an object", options);
  }
  // Allocates nothing when every key is allowed (it runs per acquisition).
  let unknown: string[] | undefined;
  for (const key in options) {
    if (Object.hasOwn(options, key) && !allowed.includes(key)) {
      (unknown ??= []).push(key);
    }
  }
  if (unknown) {
    throw new TypeError(
      `${action} as ${unknown.map((key) => `'${key}'`).join(", ")} ${
        unknown.length === 1 ? "is not an option" : "are not options"
      }: the options are ${allowed.map((key) => `'${key}'`).join(", ")}`,
    );
  }
}

/** A string of 1 to 1024 UTF-8 bytes, with no lone surrogates (two such names would encode alike). */
export function checkName(
  action: string,
  option: string,
  value: unknown,
  emptyOk = false,
): string {
  if (typeof value !== "string" || (!emptyOk && value === "")) {
    fail(
      TypeError,
      action,
      option,
      emptyOk ? "a string" : "a non-empty string",
      value,
    );
  }
  if (!value.isWellFormed()) {
    fail(
      TypeError,
      action,
      option,
      "a well-formed string without lone surrogates",
      value,
    );
  }
  // A UTF-16 code unit is at most 3 UTF-8 bytes: short names need no encoding.
  if (value.length * 3 <= MAX_KEY_PART_BYTES) return value;
  const bytes = encoder.encode(value).length;
  if (bytes > MAX_KEY_PART_BYTES) {
    throw new RangeError(
      `${action} as '${option}' must be at most ${MAX_KEY_PART_BYTES} bytes in UTF-8: current length is ${bytes} bytes`,
    );
  }
  return value;
}

/** The key prefix: braces would move every lock's hash tag into the prefix. */
export function checkPrefix(action: string, value: unknown): string {
  const prefix = checkName(action, "prefix", value, true);
  if (prefix.includes("{") || prefix.includes("}")) {
    fail(TypeError, action, "prefix", "free of '{' and '}'", prefix);
  }
  return prefix;
}

/** An integer in `[min, max]`, or `Infinity` when `infinity` is set. */
export function checkInteger(
  action: string,
  option: string,
  value: unknown,
  min: number,
  max: number,
  infinity = false,
): number {
  if (typeof value === "number") {
    if (Number.isInteger(value) && value >= min && value <= max) return value;
    if (infinity && value === Infinity) return value;
  }
  // The requirement is spelled out only for the message (this runs several
  // times per acquisition).
  const range = `an integer from ${min} to ${max}${
    infinity ? ", or Infinity" : ""
  }`;
  if (typeof value !== "number") fail(TypeError, action, option, range, value);
  fail(RangeError, action, option, range, value);
}

/** A boolean, nothing truthy in its place. */
export function checkBoolean(
  action: string,
  option: string,
  value: unknown,
): boolean {
  if (typeof value !== "boolean") {
    fail(TypeError, action, option, "a boolean", value);
  }
  return value;
}

/** An `AbortSignal` or `undefined`. */
export function checkSignal(
  action: string,
  value: unknown,
): AbortSignal | undefined {
  if (value !== undefined && !(value instanceof AbortSignal)) {
    fail(TypeError, action, "signal", "an AbortSignal", value);
  }
  return value;
}

/**
 * Runs `check` (settings checks that take the action their messages start
 * with), naming the action only when a check fails: quoting a lock's name
 * for every handle cost more than the checks themselves. `check` must have
 * no effect but its result and its error.
 */
export function checkedAs<T>(
  action: () => string,
  check: (action: string) => T,
): T {
  try {
    return check("");
  } catch {
    // The same checks again, to throw the same error with the action.
    return check(action());
  }
}
