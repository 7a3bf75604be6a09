/*
 * Coroutine records: one per request (or background job), OpenResty style.
 *
 * A yielding host call (host.sleep, host.http.request) registers its pending
 * operation with host_co_yield_op() and yields; the event that completes it pushes
 * the results onto the coroutine and calls host_co_resume(). Cancellation (client
 * gone, deadline, shutdown) calls the op's cancel hook, so no callback ever fires
 * into a coroutine that no longer exists.
 */
#ifndef HOST_SCHED_H
#define HOST_SCHED_H

#include <stdint.h>
#include <lua.h>

#include "host/worker.h"

typedef struct host_co_t host_co_t;

/** Undoes a pending operation without resuming (frees its resources). */
typedef void (*host_op_cancel_cb)(void *op);

/**
 * Called once when the coroutine has finished: status is LUA_OK (results on
 * co->L's stack) or an error status (message on top). Not called on cancel.
 */
typedef void (*host_co_done_cb)(host_co_t *co, int status, int nresults);

struct host_co_t {
    lua_State *L;    /* the coroutine thread */
    int ref;         /* anchors L in gen->L's registry */
    host_gen_t *gen; /* generation the coroutine runs on */
    host_worker_t *worker;
    void *op; /* pending operation, NULL when running or idle */
    host_op_cancel_cb cancel;
    host_co_done_cb on_done;
    void *owner; /* the request record, for on_done */
    uint64_t
        deadline_ms; /* monotonic; the watchdog (host/watchdog.h) stops CPU-bound code past it */
    int running;     /* inside lua_resume: completions must not re-enter */
    int background;  /* not a request: excluded from worker->inflight */
};

/**
 * Creates a coroutine on the worker's current generation. The function to run
 * must then be pushed onto co->L, followed by its arguments.
 */
host_co_t *host_co_new(host_worker_t *w, host_co_done_cb on_done, void *owner,
                       uint64_t deadline_ms);

/**
 * Like host_co_new, on an explicit generation: a coroutine spawned from Lua must
 * live in the same lua_State as its function. Background coroutines (owner NULL,
 * `background` set) are not counted as in-flight requests, so a drain does not
 * wait for them; durable work they do must survive being cut off.
 */
host_co_t *host_co_new_on(host_worker_t *w, host_gen_t *gen, host_co_done_cb on_done, void *owner,
                          uint64_t deadline_ms, int background);

/**
 * Starts or continues the coroutine with `nargs` values on its stack. Returns 1 when it
 * is suspended on a host operation (co stays valid), 0 when it has finished (on_done
 * has run and co is gone).
 */
int host_co_resume(host_co_t *co, int nargs);

/** Cancels a pending op (if any) and destroys the coroutine without calling on_done. */
void host_co_destroy(host_co_t *co);

/** The record of the running coroutine, or NULL when `L` is not a host coroutine. */
host_co_t *host_co_current(lua_State *L);

/**
 * Marks `op` as the coroutine's pending operation and yields. Call as
 * `return host_co_yield_op(L, op, cancel);` from a lua_CFunction. Raises a Lua error
 * when the caller is not a yieldable host coroutine (load phase, CLI).
 */
int host_co_yield_op(lua_State *L, void *op, host_op_cancel_cb cancel);

/** Clears the pending op; completion handlers call this before pushing results. */
void host_co_clear_op(host_co_t *co);

#endif
