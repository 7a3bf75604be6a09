/*
 * Coroutine records: creation, resumption, yields for host operations, teardown.
 * Runs on the worker's loop thread only.
 */
#include <stdlib.h>

#include <lauxlib.h>

#include "host/sched.h"

/* How often (in VM instructions) a running coroutine checks its deadline. */
#define DEADLINE_CHECK_INSTRUCTIONS 10000

static void on_count_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    host_co_t *co = host_co_current(L);
    if (co != NULL && co->deadline_ms != 0 && host_now_ms() > co->deadline_ms) {
        /* Past the deadline, fire on every instruction from now on. Otherwise a
         * handler that catches this error with pcall inside a loop would run another
         * DEADLINE_CHECK_INSTRUCTIONS of its own code per error and keep the worker
         * forever; checking each instruction re-raises right after any pcall, so
         * the error unwinds out of the coroutine (the request then answers 500). */
        lua_sethook(L, on_count_hook, LUA_MASKCOUNT, 1);
        luaL_error(L, "execution time limit exceeded");
    }
}

host_co_t *host_co_current(lua_State *L)
{
    return *(host_co_t **)lua_getextraspace(L);
}

host_co_t *host_co_new(host_worker_t *w, host_co_done_cb on_done, void *owner, uint64_t deadline_ms)
{
    return host_co_new_on(w, w->gen, on_done, owner, deadline_ms, 0);
}

/*
 * Finished coroutine threads are kept for reuse, per generation: a new request then
 * skips lua_newthread + luaL_ref (and the collector never has to free the thread).
 * The pool is a userdata in the generation's registry, so it lives and dies with that
 * lua_State; every pooled thread stays anchored by its registry ref, and lua_close
 * frees them all with the generation. Only a thread whose function returned (lua_resume
 * gave LUA_OK) is pooled: every pcall it made has returned too, so nothing of it is left
 * but an empty stack, which lua_resetthread clears. A thread that died with an error, or
 * was cancelled while suspended (possibly inside a pcall, whose message handler the
 * thread would otherwise keep), is released as before. Scripts cannot get hold of a
 * request's thread object (the sandbox has no coroutine or debug library), so a reused
 * thread is indistinguishable from a new one.
 */
#define CO_POOL_MAX 64

typedef struct {
    int n;
    struct {
        lua_State *L;
        int ref;
    } free[CO_POOL_MAX];
} co_pool_t;

static const char co_pool_key; /* its address is the registry key of the pool */

static co_pool_t *co_pool(lua_State *G)
{
    co_pool_t *pool;
    if (lua_rawgetp(G, LUA_REGISTRYINDEX, &co_pool_key) == LUA_TUSERDATA) {
        pool = lua_touserdata(G, -1);
        lua_pop(G, 1);
        return pool;
    }
    lua_pop(G, 1);
    pool = lua_newuserdatauv(G, sizeof(*pool), 0);
    pool->n = 0;
    lua_rawsetp(G, LUA_REGISTRYINDEX, &co_pool_key);
    return pool;
}

host_co_t *host_co_new_on(host_worker_t *w, host_gen_t *gen, host_co_done_cb on_done, void *owner,
                          uint64_t deadline_ms, int background)
{
    host_co_t *co = calloc(1, sizeof(*co));
    if (co == NULL)
        return NULL;
    co->background = background;
    co->gen = gen;
    co->worker = w;
    co->on_done = on_done;
    co->owner = owner;
    co->deadline_ms = deadline_ms;
    co_pool_t *pool = co_pool(gen->L);
    if (pool->n > 0) {
        --pool->n;
        co->L = pool->free[pool->n].L;
        co->ref = pool->free[pool->n].ref;
    } else {
        co->L = lua_newthread(gen->L);                 /* thread */
        co->ref = luaL_ref(gen->L, LUA_REGISTRYINDEX); /* - */
    }
    *(host_co_t **)lua_getextraspace(co->L) = co;
    /* Also resets the instruction count (and undoes a past-deadline count of 1). */
    lua_sethook(co->L, on_count_hook, LUA_MASKCOUNT, DEADLINE_CHECK_INSTRUCTIONS);
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
    int status = lua_resetthread(co->L); /* runs pending to-be-closed variables */
    co_pool_t *pool = co_pool(gen->L);
    if (returned && status == LUA_OK && !gen->retired && pool->n < CO_POOL_MAX) {
        lua_settop(co->L, 0);
        pool->free[pool->n].L = co->L;
        pool->free[pool->n].ref = co->ref;
        ++pool->n;
    } else {
        luaL_unref(gen->L, LUA_REGISTRYINDEX, co->ref);
    }
    free(co);
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

void host_co_resume(host_co_t *co, int nargs)
{
    int nresults = 0;
    co->running = 1;
    int status = lua_resume(co->L, NULL, nargs, &nresults);
    co->running = 0;
    if (status == LUA_YIELD) {
        if (co->op != NULL)
            return; /* an event will resume it */
        /* A bare coroutine.yield or a yield from a C function that did not register an
         * operation: nothing would ever resume it, so fail the request now. */
        lua_settop(co->L, 0);
        lua_pushliteral(co->L, "yield outside a host operation");
        status = LUA_ERRRUN;
    }
    if (co->on_done != NULL)
        co->on_done(co, status, nresults);
    co_free(co, status == LUA_OK);
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
