/*
 * A minimal TAP producer for the C unit tests (h2o's picotest spirit): each test
 * binary prints "ok N - name" / "not ok N - name" lines and a final plan, and
 * exits non-zero when any check failed. tests/run.sh counts the lines.
 */
#ifndef TESTS_TAP_H
#define TESTS_TAP_H

#include <stdio.h>
#include <stdlib.h>

static int tap_count, tap_failed;

#define ok(cond, ...)                                                                              \
    do {                                                                                           \
        int tap_ok_ = (cond) ? 1 : 0;                                                              \
        ++tap_count;                                                                               \
        if (!tap_ok_)                                                                              \
            ++tap_failed;                                                                          \
        printf("%s %d - ", tap_ok_ ? "ok" : "not ok", tap_count);                                  \
        printf(__VA_ARGS__);                                                                       \
        printf("\n");                                                                              \
        if (!tap_ok_)                                                                              \
            printf("#   failed at %s:%d\n", __FILE__, __LINE__);                                   \
    } while (0)

static inline int tap_done(void)
{
    printf("1..%d\n", tap_count);
    return tap_failed == 0 ? 0 : 1;
}

#endif
