import denoJson from "../deno.json" with { type: "json" };

/** deadbolt's version, as published. */
export const VERSION: string = denoJson.version;
