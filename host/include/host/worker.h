/*
 * A worker is one OS thread with its own h2o event loop, its own listener
 * (SO_REUSEPORT) and its own generation of Lua VMs. Nothing in here is shared
 * between threads except through h2o_multithread messages and atomics.
 */
#ifndef HOST_WORKER_H
#define HOST_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <lua.h>

#define H2O_USE_LIBUV 0
#include <h2o.h>

#include "host/timers.h"

typedef struct host_http_t host_http_t;

/**
 * A generation: one lua_State with scripts/ and lualib/ loaded. Requests hold a
 * reference to the generation they started on, so a reload never pulls code out
 * from under a running coroutine; a retired generation is closed when its last
 * request ends.
 */
typedef struct host_lua_heap host_lua_heap_t;

typedef struct host_gen_t {
    lua_State *L;
    host_lua_heap_t *heap; /* L's allocator (host/lua_heap.h), freed after lua_close */
    int handle_ref;        /* registry ref of app.server.handle */
    int module_ref;        /* registry ref of the entry module (for its optional start hook) */
    int names_ref;         /* registry ref of the request/response field names (server.c), or 0 */
    void *co_pool;         /* finished coroutine records kept for reuse (sched.c), or NULL */
    unsigned id;
    unsigned refs;
    int retired;
} host_gen_t;

typedef struct host_worker_t {
    int index;
    pthread_t thread;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    h2o_evloop_t *loop;
    h2o_socket_t *listener;
    host_timers_t *timers;
    host_http_t *http;
    host_gen_t *gen;
    unsigned gen_wanted; /* generation number the reload watcher asked for */
    size_t inflight;     /* coroutines not yet finished, requests and others */
    int draining;
    uint64_t drain_deadline_ms;
    h2o_multithread_queue_t *queue;
    h2o_multithread_receiver_t control;
    uint64_t request_seq;
    uint64_t request_id_salt;
    /* The coroutine running on this thread (inside lua_resume) and its deadline, 0
     * when none or no deadline: read by the watchdog thread and its signal handler. */
    lua_State *volatile running_L;
    _Atomic uint64_t running_deadline_ms;
    int watchdog_gone; /* the thread has left worker_main (under the watchdog's lock) */
} host_worker_t;

/** The worker running on this thread, or NULL (CLI commands, tests). */
extern __thread host_worker_t *host_current_worker;

/** Number of open client connections across all workers (for MAX_CONNECTIONS). */
extern atomic_size_t host_open_connections;

/** Releases a request's hold on a generation; closes retired generations at zero. */
void host_gen_release(host_gen_t *gen);

#endif
