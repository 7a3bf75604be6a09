/* The coroutine CPU-time guard: see host/watchdog.h. */
#define _GNU_SOURCE /* pthread_setname_np */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>

#include "host/sched.h"
#include "host/timers.h"
#include "host/watchdog.h"

static host_worker_t *watched;
static int nwatched;
static uint64_t period_ms = HOST_WATCHDOG_MIN_PERIOD_MS;
/* Held while the watchdog signals, and by a worker marking itself gone: a thread that
 * has left worker_main (and may be joined) is never signalled. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

void host_watchdog_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    host_co_t *co = host_co_current(L);
    if (co != NULL && co->deadline_ms != 0 && host_now_ms() > co->deadline_ms) {
        /* Past the deadline, fire on every instruction from now on: a handler that
         * catches this error with pcall inside a loop gets it again right after the
         * pcall, so the error unwinds out of the coroutine (the request answers 500). */
        lua_sethook(L, host_watchdog_hook, LUA_MASKCOUNT, 1);
        luaL_error(L, "execution time limit exceeded");
        return;
    }
    lua_sethook(L, NULL, 0, 0); /* a late signal: the coroutine it meant has gone */
}

static void on_signal(int sig)
{
    (void)sig;
    host_worker_t *w = host_current_worker;
    if (w == NULL)
        return;
    lua_State *L = w->running_L;
    if (L != NULL)
        lua_sethook(L, host_watchdog_hook, LUA_MASKCOUNT, 1);
}

static void *watchdog_main(void *arg)
{
    (void)arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    struct timespec period = {(time_t)(period_ms / 1000), (long)(period_ms % 1000) * 1000000L};
    for (;;) {
        nanosleep(&period, NULL);
        uint64_t now = host_now_ms();
        pthread_mutex_lock(&lock);
        for (int i = 0; i < nwatched; ++i) {
            uint64_t deadline =
                atomic_load_explicit(&watched[i].running_deadline_ms, memory_order_relaxed);
            if (deadline != 0 && now > deadline && !watched[i].watchdog_gone)
                pthread_kill(watched[i].thread, SIGURG);
        }
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}

void host_watchdog_thread_init(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGURG);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

void host_watchdog_thread_exit(void)
{
    pthread_mutex_lock(&lock);
    if (host_current_worker != NULL)
        host_current_worker->watchdog_gone = 1;
    pthread_mutex_unlock(&lock);
}

uint64_t host_watchdog_period_ms(uint64_t shortest_timeout_ms)
{
    uint64_t p = shortest_timeout_ms / 20;
    if (p < HOST_WATCHDOG_MIN_PERIOD_MS)
        return HOST_WATCHDOG_MIN_PERIOD_MS;
    return p > HOST_WATCHDOG_MAX_PERIOD_MS ? HOST_WATCHDOG_MAX_PERIOD_MS : p;
}

int host_watchdog_start(host_worker_t *workers, int nworkers, uint64_t period)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART; /* the worker's own system calls carry on */
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGURG, &sa, NULL) != 0)
        return -1;
    watched = workers;
    nwatched = nworkers;
    period_ms = period;
    pthread_t t;
    if (pthread_create(&t, NULL, watchdog_main, NULL) != 0)
        return -1;
    pthread_setname_np(t, "aicode-watchdog"); /* findable in /proc/<pid>/task/<tid>/comm */
    pthread_detach(t);
    return 0;
}
