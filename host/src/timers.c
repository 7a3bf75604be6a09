#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "host/timers.h"

struct host_timers_t {
    int fd;
    h2o_socket_t *sock;
    host_timer_t **heap;
    size_t size, capacity;
    uint64_t armed_for; /* deadline programmed into the timerfd, 0 once it has fired */
};

uint64_t host_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void heap_swap(host_timers_t *t, size_t a, size_t b)
{
    host_timer_t *tmp = t->heap[a];
    t->heap[a] = t->heap[b];
    t->heap[b] = tmp;
    t->heap[a]->heap_index = a;
    t->heap[b]->heap_index = b;
}

static void heap_up(host_timers_t *t, size_t i)
{
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (t->heap[parent]->deadline_ms <= t->heap[i]->deadline_ms)
            break;
        heap_swap(t, i, parent);
        i = parent;
    }
}

static void heap_down(host_timers_t *t, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < t->size && t->heap[l]->deadline_ms < t->heap[m]->deadline_ms)
            m = l;
        if (r < t->size && t->heap[r]->deadline_ms < t->heap[m]->deadline_ms)
            m = r;
        if (m == i)
            break;
        heap_swap(t, i, m);
        i = m;
    }
}

static void heap_remove(host_timers_t *t, size_t i)
{
    host_timer_t *removed = t->heap[i];
    --t->size;
    if (i != t->size) {
        t->heap[i] = t->heap[t->size];
        t->heap[i]->heap_index = i;
        heap_down(t, i);
        heap_up(t, i);
    }
    removed->heap_index = SIZE_MAX;
}

/*
 * Arms the timerfd for the earliest deadline, but only when that is earlier than what
 * is armed (or nothing is). It never disarms and never pushes the alarm later: when the
 * timer it was armed for is stopped (the common case, a request finishing long before
 * its timeout), the timerfd fires early, on_timerfd finds nothing due and re-arms for
 * whatever is earliest then. That costs one wake-up per armed deadline instead of two
 * timerfd_settime calls per request.
 */
static void reprogram(host_timers_t *t)
{
    if (t->size == 0)
        return;
    uint64_t want = t->heap[0]->deadline_ms;
    if (t->armed_for != 0 && t->armed_for <= want)
        return;
    t->armed_for = want;
    struct itimerspec its;
    memset(&its, 0, sizeof(its));
    uint64_t now = host_now_ms();
    uint64_t delay = want > now ? want - now : 0;
    if (delay == 0) /* an all-zero it_value would disarm */
        its.it_value.tv_nsec = 1;
    else {
        its.it_value.tv_sec = delay / 1000;
        its.it_value.tv_nsec = (delay % 1000) * 1000000;
    }
    timerfd_settime(t->fd, 0, &its, NULL);
}

static void on_timerfd(h2o_socket_t *sock, const char *err)
{
    host_timers_t *t = sock->data;
    uint64_t expirations;
    (void)err;
    while (read(t->fd, &expirations, sizeof(expirations)) > 0)
        ;
    t->armed_for = 0;
    uint64_t now = host_now_ms();
    /* Callbacks may start or stop timers, so re-read the heap top each round. */
    while (t->size != 0 && t->heap[0]->deadline_ms <= now) {
        host_timer_t *timer = t->heap[0];
        heap_remove(t, 0);
        timer->cb(timer);
    }
    reprogram(t);
}

host_timers_t *host_timers_create(h2o_evloop_t *loop)
{
    host_timers_t *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (t->fd < 0) {
        free(t);
        return NULL;
    }
    t->sock = h2o_evloop_socket_create(loop, t->fd, H2O_SOCKET_FLAG_DONT_READ);
    t->sock->data = t;
    h2o_socket_read_start(t->sock, on_timerfd);
    return t;
}

void host_timers_destroy(host_timers_t *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i != t->size; ++i)
        t->heap[i]->heap_index = SIZE_MAX;
    h2o_socket_read_stop(t->sock);
    h2o_socket_close(t->sock); /* closes the fd */
    free(t->heap);
    free(t);
}

void host_timer_init(host_timer_t *timer, host_timer_cb cb, void *data)
{
    timer->cb = cb;
    timer->data = data;
    timer->deadline_ms = 0;
    timer->heap_index = SIZE_MAX;
}

void host_timer_start(host_timers_t *t, host_timer_t *timer, uint64_t delay_ms)
{
    if (host_timer_is_armed(timer))
        heap_remove(t, timer->heap_index);
    if (t->size == t->capacity) {
        size_t cap = t->capacity != 0 ? t->capacity * 2 : 64;
        host_timer_t **heap = realloc(t->heap, cap * sizeof(*heap));
        if (heap == NULL)
            abort(); /* out of memory on the loop thread: nothing sane to do */
        t->heap = heap;
        t->capacity = cap;
    }
    timer->deadline_ms = host_now_ms() + delay_ms;
    timer->heap_index = t->size;
    t->heap[t->size++] = timer;
    heap_up(t, timer->heap_index);
    reprogram(t);
}

void host_timer_stop(host_timers_t *t, host_timer_t *timer)
{
    if (!host_timer_is_armed(timer))
        return;
    heap_remove(t, timer->heap_index);
    /* No reprogram: an early expiry is harmless (see reprogram). */
}
