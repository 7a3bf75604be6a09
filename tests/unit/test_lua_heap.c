/* The Lua VM allocator (host/src/lua_heap.c): blocks keep their contents across
 * resizes in and out of the size classes, are aligned for any Lua object, never
 * overlap, and a whole Lua program runs on it with the same results as on malloc. */
#include <stdint.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "host/lua_heap.h"
#include "tap.h"

#define XORSHIFT_SEED 88172645463325252ULL
#include "xorshift.h"

#define NBLOCKS 2000

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; ++i)
        p[i] = (unsigned char)(seed * 31 + i);
}

static int check(const unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; ++i)
        if (p[i] != (unsigned char)(seed * 31 + i))
            return 0;
    return 1;
}

/* Sizes around the interesting lines: class edges and the small/large limit. */
static size_t random_size(void)
{
    switch (rnd(4)) {
    case 0:
        return 1 + rnd(64);
    case 1:
        return HOST_LUA_HEAP_SMALL - 20 + rnd(40);
    case 2:
        return 16 * (1 + rnd(40)) + rnd(3) - 1;
    default:
        return 1 + rnd(3000);
    }
}

static void test_blocks(void)
{
    host_lua_heap_t *h = host_lua_heap_new();
    unsigned char *blocks[NBLOCKS] = {0};
    size_t sizes[NBLOCKS] = {0};
    unsigned seeds[NBLOCKS] = {0};
    int corrupt = 0, misaligned = 0;
    for (int step = 0; step < 200000; ++step) {
        int i = (int)rnd(NBLOCKS);
        if (blocks[i] == NULL) {
            size_t n = random_size();
            blocks[i] = host_lua_heap_alloc(h, NULL, LUA_TTABLE, n); /* osize: a type tag */
            sizes[i] = n;
            seeds[i] = (unsigned)step;
            fill(blocks[i], n, seeds[i]);
        } else if (rnd(3) == 0) {
            corrupt += !check(blocks[i], sizes[i], seeds[i]);
            host_lua_heap_alloc(h, blocks[i], sizes[i], 0);
            blocks[i] = NULL;
        } else {
            size_t n = random_size();
            corrupt += !check(blocks[i], sizes[i], seeds[i]);
            unsigned char *p = host_lua_heap_alloc(h, blocks[i], sizes[i], n);
            size_t keep = n < sizes[i] ? n : sizes[i];
            corrupt += !check(p, keep, seeds[i]);
            blocks[i] = p;
            sizes[i] = n;
            seeds[i] = (unsigned)step;
            fill(p, n, seeds[i]);
        }
        if (blocks[i] != NULL && ((uintptr_t)blocks[i] % 16) != 0)
            ++misaligned;
    }
    /* Every live block still holds exactly what was written to it: no two overlap. */
    for (int i = 0; i < NBLOCKS; ++i)
        if (blocks[i] != NULL)
            corrupt += !check(blocks[i], sizes[i], seeds[i]);
    ok(corrupt == 0, "200000 random allocs, resizes and frees keep every block's contents");
    ok(misaligned == 0, "every block is 16-byte aligned");
    for (int i = 0; i < NBLOCKS; ++i)
        if (blocks[i] != NULL)
            host_lua_heap_alloc(h, blocks[i], sizes[i], 0);
    host_lua_heap_free(h);
}

static void test_reuse(void)
{
    host_lua_heap_t *h = host_lua_heap_new();
    void *a = host_lua_heap_alloc(h, NULL, 0, 40);
    host_lua_heap_alloc(h, a, 40, 0);
    void *b = host_lua_heap_alloc(h, NULL, 0, 33); /* same 48-byte class */
    ok(a == b, "a freed block is reused for the next allocation of its class");
    void *c = host_lua_heap_alloc(h, b, 33, 48);
    ok(c == b, "a resize within the class keeps the block");
    void *d = host_lua_heap_alloc(h, c, 48, 49);
    ok(d != c, "a resize across classes moves the block");
    host_lua_heap_alloc(h, d, 49, 0);
    host_lua_heap_free(h);
}

static const char program[] =
    "local t, parts = {}, {}\n"
    "for i = 1, 20000 do\n"
    "  t[i] = { id = i, name = 'item ' .. i, tags = { i % 7, i % 11 } }\n"
    "  if i % 3 == 0 then t[i - 1] = nil end\n"
    "end\n"
    "local sum = 0\n"
    "for _, v in pairs(t) do sum = sum + v.id + #v.name + v.tags[1] + v.tags[2] end\n"
    "for i = 1, 2000 do parts[#parts + 1] = string.rep('x', i % 700) .. i end\n"
    "local big = table.concat(parts, ',')\n"
    "local co = coroutine.wrap(function(a) local s = 0 for i = 1, a do s = s + coroutine.yield(i) "
    "end return s end)\n"
    "local v = co(100) for i = 1, 100 do v = co(i) end\n"
    "collectgarbage() collectgarbage()\n"
    "return string.format('%d %d %d %d', sum, #big, v, collectgarbage('count') > 0 and 1 or 0)\n";

static char *run_program(lua_State *L)
{
    luaL_openlibs(L);
    if (luaL_dostring(L, program) != LUA_OK)
        return strdup(lua_tostring(L, -1));
    return strdup(lua_tostring(L, -1));
}

static void test_vm(void)
{
    lua_State *ref = luaL_newstate();
    char *want = run_program(ref);
    lua_close(ref);
    host_lua_heap_t *h = host_lua_heap_new();
    lua_State *L = lua_newstate(host_lua_heap_alloc, h);
    char *got = run_program(L);
    lua_close(L);
    host_lua_heap_free(h);
    ok(strcmp(want, got) == 0, "a Lua program gives the same result on the heap as on malloc (%s)",
       got);
    free(want);
    free(got);
}

int main(void)
{
    test_blocks();
    test_reuse();
    test_vm();
    return tap_done();
}
