/*
 * The HTTP side: h2o configuration, one listener and loop per worker thread, and
 * the bridge that runs each request as a Lua coroutine of app.server.handle(req).
 *
 * The request object handed to Lua:
 *   {method, path (normalised, no query), query (raw string or nil),
 *    headers = {lower-case name = value (repeats joined with ", ")},
 *    body (string or nil), remote_addr, request_id, scheme, version}
 * The handler returns {status = int, headers = {name = value}, body = string,
 *   user_id = string|nil (for the access log)}.
 */
#ifndef HOST_SERVER_H
#define HOST_SERVER_H

/** Configures h2o (and TLS when configured). Returns -1 with a message logged. */
int host_server_init(void);

/** Starts `host_config.workers` threads; each builds its generation and listens. */
int host_server_start(void);

/** Asks every worker to build a new generation (SIGHUP, file watcher). */
void host_server_reload(void);

/** Stops accepting, lets in-flight requests finish (bounded by DRAIN_TIMEOUT_MS), joins. */
void host_server_drain_and_stop(void);

/** Bumped on each successful reload; tests read it through /health in dev mode. */
extern unsigned host_reload_count;

#endif
