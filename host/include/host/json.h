/*
 * host.json: JSON for Lua handlers, decoded with jansson and encoded directly from Lua values.
 *
 * Lua API (the table pushed by host_open_json(), reachable from Lua as `host.json`):
 *
 *   json.decode(s)      -> value | nil, err
 *       Objects become tables marked with the HOST_JSON_OBJECT_MT metatable, arrays tables
 *       marked with HOST_JSON_ARRAY_MT, `null` the shared sentinel (json.null), integers Lua
 *       integers (full int64 range) and reals Lua floats. Rejected with a short message that
 *       is safe to show a client and quotes at most 80 characters of the input: invalid
 *       JSON, duplicate object keys, `\u0000` in strings, nesting deeper than
 *       HOST_JSON_MAX_DEPTH, integers outside int64, reals that overflow a double and input
 *       larger than HOST_JSON_MAX_INPUT. Raises only when `s` is not a string.
 *
 *   json.encode(v)      -> string | nil, err
 *       nil (top level only) and json.null encode as `null`; integers exactly; floats as the
 *       shortest of %.15g/%.16g/%.17g that reads back to the same double, with ".0" appended
 *       when it would otherwise look like an integer (so 3.0 decodes as a float again);
 *       strings must be valid UTF-8 and are emitted raw except for `"`, `\`, control
 *       characters and U+2028/U+2029, which are escaped (`/` is not).
 *       Tables: the array marker gives an array of t[1..#t] (nil holes become `null`), the
 *       object marker an object (every key must be a string). Unmarked tables: empty -> `{}`,
 *       keys exactly 1..n -> array, all keys strings -> object, anything else is an error.
 *       Object keys are sorted bytewise so output is stable. Tables are read with raw access
 *       only: no metamethod ever runs. Errors (returned, never raised): NaN/Infinity,
 *       invalid UTF-8, mixed or sparse keys, nesting deeper than HOST_JSON_MAX_DEPTH (which
 *       also catches cycles), functions, threads and userdata other than json.null.
 *
 *   json.null           the shared null sentinel (see host/common.h)
 *   json.array([t])     marks t (or a new table) as a JSON array and returns it
 *   json.object([t])    marks t (or a new table) as a JSON object and returns it
 *   json.is_array(v)    true when v is a table carrying the array marker
 */
#ifndef HOST_JSON_H
#define HOST_JSON_H

#include <stddef.h>

#include <lua.h>
#include <lauxlib.h>

/** Deepest nesting of arrays/objects accepted by decode and produced by encode. */
#define HOST_JSON_MAX_DEPTH 64

/** Largest input, in bytes, that host_json_push_decoded() / json.decode accept (16 MiB). */
#define HOST_JSON_MAX_INPUT ((size_t)16 * 1024 * 1024)

/**
 * Opens the module, luaopen-style: creates the marker metatables if needed and pushes the
 * module table described at the top of this header. Returns 1 (the number of results).
 */
int host_open_json(lua_State *L);

/**
 * Decodes `len` bytes of JSON at `s` and pushes the resulting Lua value.
 *
 * Returns 0 with exactly one value pushed, or -1 with nothing pushed and a NUL-terminated,
 * client-safe message (printable ASCII, at most 80 characters of the input) written to
 * `err` (truncated to `errlen`; `err` may be NULL when `errlen` is 0). Jansson's tree is
 * owned by a garbage-collected box while it is converted, so a Lua memory error raised
 * meanwhile frees it instead of leaking.
 */
int host_json_push_decoded(lua_State *L, const char *s, size_t len, char *err, size_t errlen);

/**
 * Encodes the Lua value at stack index `idx` and appends the text to the buffer `b`.
 *
 * Returns 0 on success, or -1 with nothing appended and the message written to `err`.
 * The encoder works in a per-state scratch area that the Lua state owns (freed by its
 * __gc), calls no metamethod and allocates no Lua object while it walks the value, so a
 * memory error can only be raised before or after the walk and leaks nothing. The text
 * reaches `b` through luaL_addvalue(), which respects the luaL_Buffer stack discipline:
 * call it with the stack as the previous buffer operation left it. Because a buffer may
 * keep a box on the stack, pass a positive (absolute) `idx`.
 */
int host_json_encode_value(lua_State *L, int idx, luaL_Buffer *b, char *err, size_t errlen);

/**
 * Encodes the Lua value at stack index `idx` and pushes the result as a Lua string.
 * Returns 0 with the string pushed, or -1 with nothing pushed and the message in `err`.
 * This is what json.encode uses; same guarantees as host_json_encode_value().
 */
int host_json_push_encoded(lua_State *L, int idx, char *err, size_t errlen);

/**
 * Pushes the marker metatable registered under `name` (HOST_JSON_ARRAY_MT or
 * HOST_JSON_OBJECT_MT), creating it with luaL_newmetatable() on first use.
 */
void host_json_marker_mt(lua_State *L, const char *name);

/**
 * Marks the table at `idx` as a JSON array (sets the HOST_JSON_ARRAY_MT metatable), so it
 * encodes as `[...]` even when empty. Other modules use it for list-shaped results.
 */
void host_json_set_array_mt(lua_State *L, int idx);

/** Marks the table at `idx` as a JSON object (sets HOST_JSON_OBJECT_MT): empty gives `{}`. */
void host_json_set_object_mt(lua_State *L, int idx);

#endif
