/*
 * Structured logging: one JSON object per line. A write(2) carries whole lines only
 * (one line, or on an event-loop thread a batch of access-log lines), so lines from
 * different threads never interleave.
 *
 * Every line passes through the redactor before it is written: registered secret
 * values (JWT_SECRET, API keys, ...) and anything shaped like a bearer token, a JWT
 * or a GitHub/Anthropic/OpenAI key become "[redacted]". Callers should not log
 * secrets in the first place; this is the last line of defence (Kong does the same
 * for Authorization headers).
 *
 * Lua API: host.log(level, msg[, fields]) with level "debug"|"info"|"warn"|"error"
 * and fields a flat table of string/number/boolean values.
 */
#ifndef HOST_LOG_H
#define HOST_LOG_H

#include <stddef.h>
#include <stdint.h>
#include <lua.h>

/** Opens the log sink: `path` (appended) or stderr when NULL. */
int host_log_open(const char *path);

/**
 * Registers a secret value to scrub from every line (copied; values under 8 bytes ignored;
 * at most 32). Register secrets at start-up, before any thread that logs exists: the
 * redactor reads the table without a lock (registration is append-only and published
 * atomically, so a late registration is safe, but lines written meanwhile may miss it).
 */
void host_log_register_secret(const char *value);

/** Writes a free-form line: {"time","level","msg"} plus no fields. */
void host_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/**
 * Makes this thread batch its access-log lines (host_log_request): they are written
 * by host_log_flush, one write(2) for all of them, which the event loop calls after
 * each iteration. Other lines are still written at once.
 */
void host_log_batch_start(void);

/** Writes this thread's batched lines, if any. */
void host_log_flush(void);

/** Access log line for a finished request (batched on a thread that asked for it). */
void host_log_request(const char *request_id, const char *method, size_t method_len,
                      const char *path, size_t path_len, int status, double duration_ms,
                      const char *user_id);

/**
 * Copies `in` to `out` (capacity `cap`, NUL-terminated) with secrets replaced.
 * Returns the output length. Exposed for the unit tests.
 */
size_t host_redact(const char *in, size_t len, char *out, size_t cap);

/** Pushes the host.log function. */
int host_open_log(lua_State *L);

#endif
