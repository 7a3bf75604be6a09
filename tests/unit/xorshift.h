/*
 * The unit tests' pseudo-random numbers: xorshift64 from a fixed seed, so every run
 * draws the same inputs and a failure replays. Define XORSHIFT_SEED (non-zero) before
 * including this header; each test file has its own sequence.
 */
#ifndef TEST_XORSHIFT_H
#define TEST_XORSHIFT_H

#include <stdint.h>

static uint64_t xorshift_state = XORSHIFT_SEED;

/* The next 64 random bits. */
static inline uint64_t xorshift_next(void)
{
    xorshift_state ^= xorshift_state << 13;
    xorshift_state ^= xorshift_state >> 7;
    xorshift_state ^= xorshift_state << 17;
    return xorshift_state;
}

/* A number in [0, n). */
static inline uint32_t rnd(uint32_t n)
{
    return (uint32_t)(xorshift_next() % n);
}

#endif
