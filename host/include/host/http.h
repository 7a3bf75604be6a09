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
 *   Header values may be host.secret handles (resolved in C, never Lua strings).
 *
 * Streaming responses (server-sent events, Connect RPC streams):
 *   s, err = host.http.stream{ ...same options...,
 *       timeout_ms = 0,          -- total deadline; 0 (the default) = none
 *       idle_timeout_s = 120,    -- a stream silent this long fails with "timeout"
 *   }                            -- returns at once; the transfer runs in the loop
 *   status, headers = s:headers()   -- yields until the response starts (or nil, err)
 *   chunk = s:read()                -- yields; next bytes, nil at the end, or nil, err
 *   s:close()                       -- aborts; also on garbage collection
 * Unread data pauses the transfer above 1 MiB (backpressure).
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
