/**
 * deadbolt's version, as published: the version of its OpenTelemetry meter
 * and tracer. A test keeps it equal to deno.json's (the library imports no
 * JSON, so that every runtime loads it as it is).
 */
export const VERSION = "0.1.0";
