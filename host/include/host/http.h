/*
 * host.http: outbound HTTP on libcurl's multi interface, driven by the worker's
 * event loop (toolchain-facts §9: curl's sockets live in a private epoll set whose
 * fd is itself watched by the h2o loop; curl's timer maps onto a host timer).
 *
 * Lua API (yields the calling coroutine; never blocks the loop):
 *   res, err = host.http.request{
 *       method = "GET", url = "https://...", headers = {name = value},
 *       body = "...", timeout_ms = 10000, max_body = 1048576,
 *       allow_http = false,      -- operator-configured endpoints only
 *       follow_redirects = false,
 *   }
 *   res = {status = 200, headers = {["content-type"] = "..."}, body = "..."}
 *   err is one of "blocked", "timeout", "connect", "dns", "tls", "too large",
 *   "error" (never contains the URL, headers or body, which may hold secrets).
 */
#ifndef HOST_HTTP_H
#define HOST_HTTP_H

#include <lua.h>

#include "host/worker.h"

/** Creates the curl multi handle of a worker. Returns NULL on failure. */
host_http_t *host_http_create(host_worker_t *w);

/** Aborts every transfer (their coroutines must already be gone) and frees. */
void host_http_destroy(host_http_t *http);

/** Pushes the host.http module table. */
int host_open_http(lua_State *L);

#endif
