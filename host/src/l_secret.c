#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "host/secret.h"

#define SECRET_MT "host.secret"

typedef struct {
    char name[128];
    char prefix[32]; /* prepended on use, e.g. "Bearer " for an Authorization header */
} secret_t;

static int l_secret_tostring(lua_State *L)
{
    secret_t *s = luaL_checkudata(L, 1, SECRET_MT);
    lua_pushfstring(L, "[secret %s]", s->name);
    return 1;
}

static int l_secret_concat(lua_State *L)
{
    return luaL_error(L, "secrets cannot be concatenated");
}

static int l_secret(lua_State *L)
{
    size_t n;
    const char *name = luaL_checklstring(L, 1, &n);
    luaL_argcheck(L, n > 0 && n < sizeof(((secret_t *)0)->name), 1, "invalid secret name");
    const char *v = getenv(name);
    if (v == NULL || *v == '\0') {
        lua_pushnil(L);
        lua_pushfstring(L, "%s is not set", name);
        return 2;
    }
    size_t plen = 0;
    const char *prefix = luaL_optlstring(L, 2, "", &plen);
    luaL_argcheck(L, plen < sizeof(((secret_t *)0)->prefix), 2, "prefix too long");
    secret_t *s = lua_newuserdatauv(L, sizeof(*s), 0);
    memcpy(s->name, name, n + 1);
    memcpy(s->prefix, prefix, plen + 1);
    luaL_setmetatable(L, SECRET_MT);
    return 1;
}

const char *host_secret_value(lua_State *L, int idx, size_t *len)
{
    secret_t *s = luaL_testudata(L, idx, SECRET_MT);
    if (s == NULL)
        return NULL;
    const char *v = getenv(s->name);
    if (v == NULL)
        v = "";
    if (s->prefix[0] == '\0') {
        *len = strlen(v);
        return v;
    }
    /* prefix + value in a per-thread C buffer (never a Lua string), valid until the
     * next call on this thread: the caller copies it at once (curl, execve env). */
    static __thread char joined[8192];
    int n = snprintf(joined, sizeof(joined), "%s%s", s->prefix, v);
    *len = n < 0 ? 0 : ((size_t)n < sizeof(joined) ? (size_t)n : sizeof(joined) - 1);
    return joined;
}

int host_open_secret(lua_State *L)
{
    if (luaL_newmetatable(L, SECRET_MT)) {
        lua_pushcfunction(L, l_secret_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushcfunction(L, l_secret_concat);
        lua_setfield(L, -2, "__concat");
        lua_pushliteral(L, "secret");
        lua_setfield(L, -2, "__name");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_secret);
    return 1;
}
