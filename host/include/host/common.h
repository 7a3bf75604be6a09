/*
 * Shared definitions for the aicode C host.
 *
 * Everything that more than one host module needs lives here: the JSON/SQL null
 * sentinel that Lua code compares against, and small helpers that keep the C/Lua
 * boundary uniform.
 */
#ifndef HOST_COMMON_H
#define HOST_COMMON_H

#include <lua.h>
#include <lauxlib.h>

/**
 * The one `null` value shared by host.json and host.sqlite. It is a light userdata
 * pointing at this byte, so `json.null == sqlite.null` holds in Lua and a SQL NULL
 * read from the store encodes as JSON `null` without translation.
 */
extern char host_null_sentinel;

/** Pushes the shared null sentinel. */
static inline void host_push_null(lua_State *L)
{
    lua_pushlightuserdata(L, &host_null_sentinel);
}

/** True when the value at `idx` is the shared null sentinel. */
static inline int host_is_null(lua_State *L, int idx)
{
    return lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == &host_null_sentinel;
}

/**
 * Registry keys of the metatables that mark decoded JSON arrays and objects, so an
 * empty array survives a decode/encode round trip as `[]` and an empty object as `{}`.
 * Both are created on first use by host_json_marker_mt().
 */
#define HOST_JSON_ARRAY_MT "host.json.array"
#define HOST_JSON_OBJECT_MT "host.json.object"

#endif
