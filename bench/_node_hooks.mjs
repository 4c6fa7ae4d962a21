// Lets Node 24 run the benchmarks, which are written for Deno:
// `node --import ./bench/_node_hooks.mjs bench/compare/compare.ts …`. A
// `npm:<name>@<version>` specifier resolves to `<name>` in node_modules
// (install the pinned versions first; see docs/benchmarks.md).
import { register } from "node:module";

const hooks = `export async function resolve(specifier, context, next) {
  if (!specifier.startsWith("npm:")) return next(specifier, context);
  const bare = specifier.slice(4).replace(/^(@[^/]+\\/[^@/]+|[^@/]+)@[^/]+/, "$1");
  return next(bare, context);
}`;
register(`data:text/javascript,${encodeURIComponent(hooks)}`);
