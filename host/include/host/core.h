/*
 * The small host.* functions that are not a module of their own:
 *
 *   host.now()            wall clock, seconds since the epoch (float, ms precision)
 *   host.monotonic_ms()   monotonic milliseconds (integer)
 *   host.sleep(seconds)   yields the coroutine; resumes after the delay
 *   host.env(name)        environment variable or nil; secret-bearing names raise,
 *                         so scripts cannot read keys the C host keeps to itself
 *   host.uuid()           random UUID v4 string
 *   host.random_hex(n)    n random bytes, hex encoded
 *   host.traceback(msg)   msg plus the stack traceback (for error logs)
 *   host.find_executable(name) -> path | nil (PATH lookup)
 *   host.base64_encode(s), host.base64_decode(s) -> s | nil (standard, padded;
 *                         the decoder also accepts the URL-safe alphabet)
 *   host.shared.incr(key, by, ttl_s) -> value, ttl_remaining_s
 *                         process-wide counters (all workers), for rate limits
 *   host.shared.get(key)  -> value | nil
 *   host.vault.put(key, value, ttl_s) / host.vault.take(key) -> value | nil
 *                         process memory only, for secrets that must pass from one
 *                         worker's VM to another's without touching the database
 *   host.spawn(fn, ...)   runs fn in a background coroutine on this VM
 *   host.is_current_generation() -> false once a reload replaced this code
 *   host.info             {version, dev, workers, data_dir, started_at}
 */
#ifndef HOST_CORE_H
#define HOST_CORE_H

#include <lua.h>

/** Pushes the table with the functions above (host.info filled from host_config). */
int host_open_core(lua_State *L);

/** Process start time (epoch seconds), set by main. */
extern double host_started_at;

#endif
