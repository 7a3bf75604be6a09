/*
 * host_core.so: the host modules that need no event loop (json, jwt, sqlite, log),
 * packaged as a Lua C module so busted specs running under plain lua5.4 exercise
 * the same C code as bin/aicode. Test-only: also exposes configure_jwt(), which the
 * real binary never offers to scripts.
 */
#include <string.h>

#include <lauxlib.h>

#include "host/common.h"
#include "host/json.h"
#include "host/jwt.h"
#include "host/log.h"
#include "host/sqlite.h"

int luaopen_host_core(lua_State *L);

static int l_configure_jwt(lua_State *L)
{
    size_t slen, supa_len = 0;
    const char *secret = luaL_checklstring(L, 1, &slen);
    const char *supa = luaL_optlstring(L, 2, NULL, &supa_len);
    char err[256];
    if (host_jwt_configure(secret, slen, supa, supa_len, 3600, 7 * 86400, err, sizeof(err)) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

int luaopen_host_core(lua_State *L)
{
    lua_newtable(L);
    host_open_json(L);
    lua_setfield(L, -2, "json");
    host_open_jwt(L);
    lua_setfield(L, -2, "jwt");
    host_open_sqlite(L);
    lua_setfield(L, -2, "sqlite");
    host_open_log(L);
    lua_setfield(L, -2, "log");
    lua_pushcfunction(L, l_configure_jwt);
    lua_setfield(L, -2, "configure_jwt");
    return 1;
}
