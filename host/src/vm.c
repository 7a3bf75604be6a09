#include <dirent.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lauxlib.h>
#include <lualib.h>

#include "host/config.h"
#include "host/core.h"
#include "host/http.h"
#include "host/json.h"
#include "host/jwt.h"
#include "host/log.h"
#include "host/lua_heap.h"
#include "host/process.h"
#include "host/secret.h"
#include "host/sqlite.h"
#include "host/vm.h"

#include "prelude.lua.h" /* generated: static const char prelude_lua[] */

#define MAX_SOURCE_BYTES (4 * 1024 * 1024)

static atomic_uint next_gen_id = 1;

/* read_source(path) -> text | nil: the only file access scripts get, via the prelude. */
static int l_read_source(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    FILE *fp = fopen(path, "rb");
    struct stat st;
    if (fp == NULL || fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode) ||
        st.st_size > MAX_SOURCE_BYTES) {
        if (fp != NULL)
            fclose(fp);
        lua_pushnil(L);
        return 1;
    }
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, (size_t)st.st_size);
    size_t n = fread(p, 1, (size_t)st.st_size, fp);
    fclose(fp);
    luaL_pushresultsize(&b, n);
    return 1;
}

/* Appends every *.lua path under `dir` (recursively) to the array at the stack top. */
static void list_lua_files(lua_State *L, const char *dir, int depth)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    if (d == NULL || depth > 8) {
        if (d != NULL)
            closedir(d);
        return;
    }
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        struct stat st;
        if (stat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            list_lua_files(L, path, depth + 1);
        } else if (S_ISREG(st.st_mode)) {
            size_t n = strlen(de->d_name);
            if (n > 4 && strcmp(de->d_name + n - 4, ".lua") == 0) {
                lua_pushstring(L, path);
                lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
            }
        }
    }
    closedir(d);
}

static void push_host_table(lua_State *L)
{
    host_open_core(L); /* host */
    host_open_json(L);
    lua_setfield(L, -2, "json");
    host_open_jwt(L);
    lua_setfield(L, -2, "jwt");
    host_open_sqlite(L);
    lua_setfield(L, -2, "sqlite");
    host_open_http(L);
    lua_setfield(L, -2, "http");
    host_open_log(L);
    lua_setfield(L, -2, "log");
    host_open_process(L);
    lua_setfield(L, -2, "process");
    host_open_secret(L);
    lua_setfield(L, -2, "secret");
}

static int on_load_error(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    luaL_traceback(L, L, msg != NULL ? msg : "(error object is not a string)", 1);
    return 1;
}

/* Runs inside lua_pcall so any raise during loading is caught. */
static int load_generation(lua_State *L)
{
    const char *module = lua_tostring(L, 1), *field = lua_tostring(L, 2);
    luaL_openlibs(L);
    if (luaL_loadbuffer(L, prelude_lua, sizeof(prelude_lua) - 1, "=prelude") != LUA_OK)
        return lua_error(L);
    push_host_table(L);
    lua_pushstring(L, host_config.lualib_dir);
    lua_pushstring(L, host_config.scripts_dir);
    lua_pushcfunction(L, l_read_source);
    lua_newtable(L);
    list_lua_files(L, host_config.lualib_dir, 0);
    list_lua_files(L, host_config.scripts_dir, 0);
    lua_call(L, 5, 2);    /* module field require finish */
    lua_pushvalue(L, -2); /* ... require finish require */
    lua_pushstring(L, module);
    lua_call(L, 1, 1); /* ... require finish mod */
    lua_insert(L, -2); /* ... require mod finish */
    lua_call(L, 0, 0); /* ... require mod */
    if (!lua_istable(L, -1))
        return luaL_error(L, "module '%s' must return a table", module);
    lua_getfield(L, -1, field); /* ... require mod fn */
    if (!lua_isfunction(L, -1))
        return luaL_error(L, "module '%s' has no function '%s'", module, field);
    return 2; /* mod fn */
}

/* An error outside any protected call (lauxlib's luaL_newstate installs the same). */
static int on_panic(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);
    host_log("error", "unprotected Lua error: %s", msg != NULL ? msg : "(not a string)");
    return 0; /* then Lua aborts */
}

host_gen_t *host_vm_build(const char *module, const char *field, char *err, size_t errlen)
{
    host_lua_heap_t *heap = host_lua_heap_new();
    lua_State *L = heap != NULL ? lua_newstate(host_lua_heap_alloc, heap) : NULL;
    if (L == NULL) {
        host_lua_heap_free(heap);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    lua_atpanic(L, on_panic);
    *(void **)lua_getextraspace(L) = NULL;
    lua_pushcfunction(L, on_load_error);
    lua_pushcfunction(L, load_generation);
    lua_pushstring(L, module);
    lua_pushstring(L, field);
    if (lua_pcall(L, 2, 2, 1) != LUA_OK) {
        snprintf(err, errlen, "%s",
                 lua_tostring(L, -1) != NULL ? lua_tostring(L, -1) : "load failed");
        lua_close(L);
        host_lua_heap_free(heap);
        return NULL;
    }
    host_gen_t *gen = calloc(1, sizeof(*gen));
    gen->L = L;
    gen->heap = heap;
    gen->handle_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* fn */
    gen->module_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* mod */
    lua_settop(L, 0);
    gen->id = atomic_fetch_add(&next_gen_id, 1);
    return gen;
}

void host_vm_call_start(host_gen_t *gen, int worker_index)
{
    lua_State *L = gen->L;
    lua_pushcfunction(L, on_load_error);
    lua_rawgeti(L, LUA_REGISTRYINDEX, gen->module_ref);
    lua_getfield(L, -1, "start");
    if (!lua_isfunction(L, -1)) {
        lua_settop(L, 0);
        return;
    }
    lua_pushinteger(L, worker_index);
    if (lua_pcall(L, 1, 0, 1) != LUA_OK)
        host_log("error", "worker %d: start hook failed: %s", worker_index, lua_tostring(L, -1));
    lua_settop(L, 0);
}

void host_vm_close(host_gen_t *gen)
{
    lua_close(gen->L);
    host_lua_heap_free(gen->heap);
    free(gen);
}
