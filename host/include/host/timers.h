/*
 * One-shot timers with arbitrary durations on an h2o evloop.
 *
 * h2o 2.2.5's h2o_timeout_t lists are fixed-duration, which suits connection
 * timeouts but not `host.sleep(0.2)` or libcurl's ever-changing deadline. Each loop
 * therefore owns one timerfd armed at the earliest deadline of a binary min-heap;
 * the timerfd is wrapped as an h2o socket so expiry is just another read event.
 * Everything here runs on the loop's own thread.
 */
#ifndef HOST_TIMERS_H
#define HOST_TIMERS_H

#include <stdint.h>
#include <stddef.h>

#define H2O_USE_LIBUV 0
#include <h2o.h>

typedef struct host_timer_t host_timer_t;
typedef void (*host_timer_cb)(host_timer_t *timer);

/** A timer owned by its user (embed it in the operation it belongs to). */
struct host_timer_t {
    host_timer_cb cb;
    void *data;
    uint64_t deadline_ms; /* monotonic */
    size_t heap_index;    /* SIZE_MAX when not armed */
};

typedef struct host_timers_t host_timers_t;

/** Monotonic clock in milliseconds. */
uint64_t host_now_ms(void);

/** Creates the timer set of a loop. Returns NULL on failure (errno set). */
host_timers_t *host_timers_create(h2o_evloop_t *loop);

/** Destroys the set; armed timers are dropped without being called. */
void host_timers_destroy(host_timers_t *timers);

/** Initialises a timer that is not armed. */
void host_timer_init(host_timer_t *timer, host_timer_cb cb, void *data);

/** Arms (or re-arms) `timer` to fire once after `delay_ms`. */
void host_timer_start(host_timers_t *timers, host_timer_t *timer, uint64_t delay_ms);

/** Disarms the timer if armed; safe to call on an unarmed timer. */
void host_timer_stop(host_timers_t *timers, host_timer_t *timer);

/** True when the timer is armed. */
static inline int host_timer_is_armed(const host_timer_t *timer)
{
    return timer->heap_index != SIZE_MAX;
}

#endif
