/*
 * Coroutine records: creation, resumption, yields for host operations, teardown.
 * Runs on the worker's loop thread only.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "host/sched.h"
#include "host/watchdog.h"

host_co_t *host_co_current(lua_State *L)
{
    return *(host_co_t **)lua_getextraspace(L);
}

host_co_t *host_co_new(host_worker_t *w, host_co_done_cb on_done, void *owner, uint64_t deadline_ms)
{
    return host_co_new_on(w, w->gen, on_done, owner, deadline_ms, 0);
}

/*
 * Finished coroutine records are kept for reuse, per generation, with their threads: a
 * new request then skips calloc, lua_newthread and luaL_ref (and the collector never
 * has to free the thread). The pool is a userdata in the generation's registry, so it
 * lives and dies with that lua_State (its __gc frees the records; lua_close frees the
 * threads, each anchored by its registry ref until then). Only a thread whose function
 * returned (lua_resume gave LUA_OK) is pooled: every pcall it made has returned too, so
 * nothing of it is left but an empty stack. A thread that died with an error, or was
 * cancelled while suspended (possibly inside a pcall, whose message handler the thread
 * would otherwise keep), is released as before. Scripts cannot get hold of a request's
 * thread object (the sandbox has no coroutine or debug library), so a reused thread is
 * indistinguishable from a new one.
 */
#define CO_POOL_MAX 64

typedef struct {
    int n;
    host_co_t *free[CO_POOL_MAX]; /* each keeps its L and ref */
} co_pool_t;

static int co_pool_gc(lua_State *G)
{
    co_pool_t *pool = lua_touserdata(G, 1);
    while (pool->n > 0)
        free(pool->free[--pool->n]);
    return 0;
}

/* The generation's pool, created on first use; the pointer is cached in gen (the
 * registry anchors the userdata for as long as gen->L lives). */
static co_pool_t *co_pool(host_gen_t *gen)
{
    if (gen->co_pool != NULL)
        return gen->co_pool;
    lua_State *G = gen->L;
    co_pool_t *pool = lua_newuserdatauv(G, sizeof(*pool), 0);
    pool->n = 0;
    lua_createtable(G, 0, 1);
    lua_pushcfunction(G, co_pool_gc);
    lua_setfield(G, -2, "__gc");
    lua_setmetatable(G, -2);
    luaL_ref(G, LUA_REGISTRYINDEX);
    gen->co_pool = pool;
    return pool;
}

host_co_t *host_co_new_on(host_worker_t *w, host_gen_t *gen, host_co_done_cb on_done, void *owner,
                          uint64_t deadline_ms, int background)
{
    co_pool_t *pool = co_pool(gen);
    host_co_t *co;
    if (pool->n > 0) {
        co = pool->free[--pool->n];
        lua_State *L = co->L;
        int ref = co->ref;
        memset(co, 0, sizeof(*co));
        co->L = L;
        co->ref = ref;
    } else {
        co = calloc(1, sizeof(*co));
        if (co == NULL)
            return NULL;
        co->L = lua_newthread(gen->L);                 /* thread */
        co->ref = luaL_ref(gen->L, LUA_REGISTRYINDEX); /* - */
    }
    co->background = background;
    co->gen = gen;
    co->worker = w;
    co->on_done = on_done;
    co->owner = owner;
    co->deadline_ms = deadline_ms;
    *(host_co_t **)lua_getextraspace(co->L) = co;
    /* The watchdog's hook may still be set on a reused thread (a signal that came
     * after its last coroutine finished): the VM runs fastest without one. */
    if (lua_gethook(co->L) != NULL)
        lua_sethook(co->L, NULL, 0, 0);
    ++gen->refs;
    if (!background)
        ++w->inflight;
    return co;
}

/* Releases the record and its thread; `returned`: the function returned (LUA_OK). */
static void co_free(host_co_t *co, int returned)
{
    host_gen_t *gen = co->gen;
    host_worker_t *w = co->worker;
    int background = co->background;
    *(host_co_t **)lua_getextraspace(co->L) = NULL;
    co_pool_t *pool = co_pool(gen);
    if (returned && !gen->retired && pool->n < CO_POOL_MAX) {
        /* Its function returned: every call, to-be-closed variable and open upvalue
         * of it is closed, the thread is back at its base level with only the results
         * on the stack, and lua_resume accepts a new function on it. lua_resetthread
         * would also shrink the stack to its minimum, which the next request would
         * then grow again (a realloc each way, each request). */
        lua_settop(co->L, 0);
        co->owner = NULL;
        pool->free[pool->n++] = co;
    } else {
        lua_resetthread(co->L); /* runs pending to-be-closed variables */
        luaL_unref(gen->L, LUA_REGISTRYINDEX, co->ref);
        free(co);
    }
    if (!background)
        --w->inflight;
    host_gen_release(gen);
}

void host_co_destroy(host_co_t *co)
{
    if (co->op != NULL && co->cancel != NULL)
        co->cancel(co->op);
    co->op = NULL;
    co_free(co, 0);
}

void host_co_clear_op(host_co_t *co)
{
    co->op = NULL;
    co->cancel = NULL;
}

int host_co_resume(host_co_t *co, int nargs)
{
    int nresults = 0;
    host_worker_t *w = co->worker;
    /* Published for the watchdog (host/watchdog.h); saved and restored because a
     * coroutine can be resumed from inside another one's host call. */
    lua_State *outer_L = w->running_L;
    uint64_t outer_deadline = atomic_load_explicit(&w->running_deadline_ms, memory_order_relaxed);
    w->running_L = co->L;
    atomic_store_explicit(&w->running_deadline_ms, co->deadline_ms, memory_order_relaxed);
    co->running = 1;
    int status = lua_resume(co->L, NULL, nargs, &nresults);
    co->running = 0;
    atomic_store_explicit(&w->running_deadline_ms, outer_deadline, memory_order_relaxed);
    w->running_L = outer_L;
    if (status == LUA_YIELD) {
        if (co->op != NULL)
            return 1; /* an event will resume it */
        /* A bare coroutine.yield or a yield from a C function that did not register an
         * operation: nothing would ever resume it, so fail the request now. */
        lua_settop(co->L, 0);
        lua_pushliteral(co->L, "yield outside a host operation");
        status = LUA_ERRRUN;
    }
    if (co->on_done != NULL)
        co->on_done(co, status, nresults);
    co_free(co, status == LUA_OK);
    return 0;
}

int host_co_yield_op(lua_State *L, void *op, host_op_cancel_cb cancel)
{
    host_co_t *co = host_co_current(L);
    if (co == NULL || !lua_isyieldable(L)) {
        if (cancel != NULL)
            cancel(op);
        return luaL_error(L, "this host call can only be used while handling a request or task");
    }
    co->op = op;
    co->cancel = cancel;
    return lua_yield(L, 0);
}
