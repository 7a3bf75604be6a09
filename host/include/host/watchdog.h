/*
 * CPU-time guard for Lua coroutines, without a per-instruction cost.
 *
 * A coroutine past its deadline_ms while it is still running (a CPU-bound loop:
 * waiting coroutines are stopped by their request timer) must be stopped. Running
 * every coroutine with a count hook did that, but a hook makes the VM check it on
 * every instruction (about a quarter of a request's Lua time). Instead, each worker
 * publishes the deadline of the coroutine it is running; a watchdog thread wakes
 * periodically and sends SIGURG to a worker whose running coroutine is past it. The
 * signal handler, on that worker's own thread, installs a count hook on the running
 * coroutine (lua_sethook is async-signal-safe: lua.c calls it from its SIGINT
 * handler). The hook raises "execution time limit exceeded" and stays armed at every
 * instruction, so a handler that catches the error keeps getting it until it unwinds;
 * a hook installed by a late signal, after a coroutine switch, finds no expired
 * deadline and removes itself.
 *
 * The period is a twentieth of the shortest deadline a request gets, within
 * [HOST_WATCHDOG_MIN_PERIOD_MS, HOST_WATCHDOG_MAX_PERIOD_MS]: CPU-bound code is
 * stopped at most 5% (or 50 ms) late, and an idle server with the default 30 s
 * deadline wakes once a second rather than 20 times.
 *
 * SIGURG: ignored by default (a stray one is harmless), unused by h2o and libcurl;
 * Go's runtime preempts goroutines with it for the same reason.
 */
#ifndef HOST_WATCHDOG_H
#define HOST_WATCHDOG_H

#include <lua.h>

#include "host/worker.h"

#include <stdint.h>

#define HOST_WATCHDOG_MIN_PERIOD_MS 50
#define HOST_WATCHDOG_MAX_PERIOD_MS 1000

/** The watchdog's period for the shortest coroutine deadline in use (see above). */
uint64_t host_watchdog_period_ms(uint64_t shortest_timeout_ms);

/**
 * Installs the signal handler and starts the watchdog thread ("aicode-watchdog") over
 * `workers`, waking every `period_ms`.
 */
int host_watchdog_start(host_worker_t *workers, int nworkers, uint64_t period_ms);

/** Lets a worker thread receive the watchdog's signal (call on that thread). */
void host_watchdog_thread_init(void);

/** Call on a worker thread as it leaves: the watchdog never signals it again. */
void host_watchdog_thread_exit(void);

/** The count hook: raises past the running coroutine's deadline, else removes itself. */
void host_watchdog_hook(lua_State *L, lua_Debug *ar);

#endif
