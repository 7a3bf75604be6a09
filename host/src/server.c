/*
 * h2o setup and the request → Lua coroutine bridge. Each worker thread owns an
 * evloop, a listener (SO_REUSEPORT), a timer set, a curl multi handle and a
 * generation of Lua VMs; nothing here is shared between threads except the
 * global h2o configuration (read-only after start) and atomics.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "host/config.h"
#include "host/http.h"
#include "host/log.h"
#include "host/sched.h"
#include "host/server.h"
#include "host/vm.h"
#include "host/watchdog.h"

__thread host_worker_t *host_current_worker;
atomic_size_t host_open_connections;
unsigned host_reload_count;

static h2o_globalconf_t globalconf;
static SSL_CTX *ssl_ctx;
static host_worker_t *workers;
static int nworkers;
static pthread_mutex_t reload_lock = PTHREAD_MUTEX_INITIALIZER;

enum { CONTROL_RELOAD = 1, CONTROL_DRAIN };
typedef struct {
    h2o_multithread_message_t super;
    int type;
} control_msg_t;

/* Per-request record, allocated in the request's pool. */
typedef struct {
    h2o_req_t *req;
    host_co_t *co;
    host_worker_t *worker;
    host_timer_t timeout;
    uint64_t started_ms;
    uint64_t started_us;
    char request_id[17];
    /* Streaming responses (Server-Sent Events): see start_stream(). */
    h2o_generator_t generator;
    char *stream_buf; /* the chunk h2o is sending; h2o keeps only a pointer */
    int streaming, write_pending, stream_status;
    const char *user_id;
} request_rec_t;

/* A streaming response may run this long before its CPU-time guard trips. */
#define STREAM_MAX_MS (2 * 60 * 60 * 1000)

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

void host_gen_release(host_gen_t *gen)
{
    --gen->refs;
    if (gen->retired && gen->refs == 0)
        host_vm_close(gen);
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 415:
        return "Unsupported Media Type";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "OK";
    }
}

static void log_request(request_rec_t *r, int status, const char *user_id)
{
    h2o_req_t *req = r->req;
    size_t path_len = req->query_at != SIZE_MAX ? req->query_at : req->path.len;
    host_log_request(r->request_id, req->method.base, req->method.len, req->path.base, path_len,
                     status, (double)(now_us() - r->started_us) / 1000.0, user_id);
}

/* Error responses produced by the host itself (before or outside Lua). */
static void send_json_error(h2o_req_t *req, const char *request_id, int status, const char *msg)
{
    char *body = h2o_mem_alloc_pool(&req->pool, 512);
    int n = snprintf(body, 512, "{\"error\":\"%s\",\"request_id\":\"%s\"}", msg, request_id);
    req->res.status = status;
    req->res.reason = reason_phrase(status);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("application/json"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-request-id"), 0, NULL,
                          request_id, strlen(request_id));
    h2o_send_inline(req, body, (size_t)n);
}

static void make_request_id(host_worker_t *w, char out[17])
{
    uint64_t z = w->request_id_salt + (++w->request_seq) * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    static const char hex[] = "0123456789abcdef"; /* as "%016llx" */
    for (int i = 15; i >= 0; --i, z >>= 4)
        out[i] = hex[z & 0xf];
    out[16] = '\0';
}

static int valid_header_name(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; ++i) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || c == ':')
            return 0;
    }
    return 1;
}

static int valid_header_value(const char *s, size_t n)
{
    for (size_t i = 0; i < n; ++i)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
            return 0;
    return 1;
}

/*
 * Streaming responses. A handler may return {status, headers, stream = fn}: the
 * host sends the headers, then runs fn(write) in a new coroutine on the same VM.
 * write(chunk) hands the chunk to h2o and yields until h2o asks for more (its
 * proceed callback), so a slow client slows the producer instead of growing a
 * buffer; it returns true, or never returns if the client went away (the request's
 * dispose destroys the coroutine). When fn returns, the response ends.
 */
static void on_stream_proceed(h2o_generator_t *gen, h2o_req_t *req)
{
    request_rec_t *r = H2O_STRUCT_FROM_MEMBER(request_rec_t, generator, gen);
    (void)req;
    free(r->stream_buf);
    r->stream_buf = NULL;
    r->write_pending = 0;
    host_co_t *co = r->co;
    if (co != NULL && co->op == r) {
        host_co_clear_op(co);
        lua_pushboolean(co->L, 1);
        host_co_resume(co, 1);
    }
}

static void on_stream_stop(h2o_generator_t *gen, h2o_req_t *req)
{
    /* The request is being torn down; on_request_dispose cancels the coroutine. */
    (void)gen;
    (void)req;
}

static void stream_write_cancel(void *op)
{
    (void)op; /* nothing owned: the buffer is freed with the request record */
}

static int l_stream_write(lua_State *L)
{
    host_co_t *co = host_co_current(L);
    request_rec_t *r = co != NULL ? co->owner : NULL;
    if (r == NULL || !r->streaming)
        return luaL_error(L, "write() is only valid inside a streaming response");
    size_t n;
    const char *chunk = luaL_checklstring(L, 1, &n);
    if (n == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    r->stream_buf = malloc(n);
    if (r->stream_buf == NULL)
        return luaL_error(L, "out of memory");
    memcpy(r->stream_buf, chunk, n);
    h2o_iovec_t iov = h2o_iovec_init(r->stream_buf, n);
    r->write_pending = 1;
    h2o_send(r->req, &iov, 1, H2O_SEND_STATE_IN_PROGRESS);
    if (!r->write_pending) { /* h2o took it synchronously */
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_settop(L, 0);
    return host_co_yield_op(L, r, stream_write_cancel);
}

static void on_stream_done(host_co_t *co, int status, int nresults)
{
    request_rec_t *r = co->owner;
    (void)nresults;
    if (r == NULL)
        return;
    r->co = NULL;
    if (status != LUA_OK) {
        const char *msg = lua_tostring(co->L, -1);
        host_log("error", "request %s: stream: %s", r->request_id,
                 msg != NULL ? msg : "(non-string error)");
    }
    /* Log first: ending the response may dispose the request (and r with it). */
    log_request(r, r->stream_status, r->user_id);
    h2o_send(r->req, NULL, 0, status == LUA_OK ? H2O_SEND_STATE_FINAL : H2O_SEND_STATE_ERROR);
}

/* Starts a streaming response; the stream function is on top of L. Returns 0. */
static int start_stream(request_rec_t *r, lua_State *L, int status, const char *user_id)
{
    host_co_t *parent = host_co_current(L);
    host_co_t *co =
        host_co_new_on(r->worker, parent->gen, on_stream_done, r, host_now_ms() + STREAM_MAX_MS, 0);
    if (co == NULL)
        return -1;
    r->streaming = 1;
    r->stream_status = status;
    r->user_id = user_id;
    r->generator.proceed = on_stream_proceed;
    r->generator.stop = on_stream_stop;
    h2o_start_response(r->req, &r->generator);
    lua_xmove(L, co->L, 1); /* the stream function: same VM, another coroutine */
    lua_pushcfunction(co->L, l_stream_write);
    r->co = co;
    host_co_resume(co, 1);
    return 0;
}

/*
 * The field names of the request table, and the fixed values among them,
 * interned once per generation into an array in its registry. The C API's
 * lua_setfield/lua_getfield("name") find a C string's Lua string through a cache keyed
 * by address plus a strcmp on every call; rawgeti of an array slot does not.
 */
enum {
    N_METHOD = 1,
    N_PATH,
    N_QUERY,
    N_HEADERS,
    N_BODY,
    N_REMOTE_ADDR,
    N_REQUEST_ID,
    N_SCHEME,
    N_VERSION,
    N_HTTP,
    N_HTTPS,
    N_HTTP_1_1,
    N_HTTP_2,
    N_COUNT
};
static const char *const names[N_COUNT] = {
    NULL,         "method", "path",    "query", "headers", "body",     "remote_addr",
    "request_id", "scheme", "version", "http",  "https",   "HTTP/1.1", "HTTP/2",
};

/* Pushes the generation's names array; returns its absolute index. */
static int push_names(lua_State *L, host_gen_t *gen)
{
    if (gen->names_ref == 0) {
        lua_createtable(L, N_COUNT - 1, 0);
        for (int i = 1; i < N_COUNT; ++i) {
            lua_pushstring(L, names[i]);
            lua_rawseti(L, -2, i);
        }
        gen->names_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, gen->names_ref);
    return lua_gettop(L);
}

/*
 * Sends the response app.server.handle returned: status, body (string), headers
 * (table), user_id (string, for the access log) and, for a streaming response, the
 * stream function; the last `nresults` values on L. Returns the status, 0 when a
 * streaming response has started, or -1 when the results are invalid.
 */
static int send_lua_response(request_rec_t *r, lua_State *L, int nresults, const char **user_id_out)
{
    h2o_req_t *req = r->req;
    int top = lua_gettop(L), base = top - nresults; /* result i is at base + i */
    *user_id_out = NULL;
    if (nresults < 1)
        return -1;
    int isnum;
    lua_Integer status = lua_tointegerx(L, base + 1, &isnum);
    if (!isnum || status < 100 || status > 599)
        return -1;
    size_t body_len = 0;
    const char *body = nresults >= 2 && lua_type(L, base + 2) == LUA_TSTRING
                           ? lua_tolstring(L, base + 2, &body_len)
                           : "";
    if (nresults >= 4 && lua_type(L, base + 4) == LUA_TSTRING)
        *user_id_out = h2o_strdup(&req->pool, lua_tostring(L, base + 4), SIZE_MAX).base;

    req->res.status = (int)status;
    req->res.reason = reason_phrase((int)status);
    if (nresults >= 3 && lua_istable(L, base + 3)) {
        lua_pushnil(L);
        while (lua_next(L, base + 3) != 0) {
            if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
                size_t nlen, vlen;
                const char *name = lua_tolstring(L, -2, &nlen),
                           *value = lua_tolstring(L, -1, &vlen);
                if (valid_header_name(name, nlen) && valid_header_value(value, vlen)) {
                    h2o_iovec_t n = h2o_strdup(&req->pool, name, nlen);
                    h2o_strtolower(n.base, n.len);
                    h2o_iovec_t v = h2o_strdup(&req->pool, value, vlen);
                    h2o_add_header_by_str(&req->pool, &req->res.headers, n.base, n.len, 1, NULL,
                                          v.base, v.len);
                }
            }
            lua_pop(L, 1);
        }
    }
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-request-id"), 0, NULL,
                          r->request_id, strlen(r->request_id));
    if (nresults >= 5 && lua_isfunction(L, base + 5)) {
        lua_pushvalue(L, base + 5);
        int rc = start_stream(r, L, (int)status, *user_id_out);
        lua_settop(L, top);
        return rc;
    }
    req->res.content_length = body_len;   /* a Content-Length instead of chunked encoding */
    h2o_send_inline(req, body, body_len); /* copies the body into the request pool */
    return (int)status;
}

static void on_request_done(host_co_t *co, int status, int nresults)
{
    request_rec_t *r = co->owner;
    if (r == NULL)
        return; /* client went away while the coroutine was running */
    r->co = NULL;
    host_timer_stop(r->worker->timers, &r->timeout);
    const char *user_id = NULL;
    int sent = -1;
    if (status == LUA_OK) {
        sent = send_lua_response(r, co->L, nresults, &user_id);
        if (sent == 0)
            return; /* streaming: logged when the stream ends */
        if (sent < 0)
            host_log("error", "request %s: handler returned an invalid response", r->request_id);
    } else {
        const char *msg = lua_tostring(co->L, -1);
        host_log("error", "request %s: %s", r->request_id,
                 msg != NULL ? msg : "(non-string error)");
    }
    if (sent < 0) {
        sent = 500;
        send_json_error(r->req, r->request_id, 500, "Internal server error");
    }
    log_request(r, sent, user_id);
}

static void on_request_timeout(host_timer_t *timer)
{
    request_rec_t *r = timer->data;
    if (r->co == NULL)
        return;
    host_co_t *co = r->co;
    r->co = NULL;
    co->owner = NULL;
    host_co_destroy(co);
    send_json_error(r->req, r->request_id, 504, "Request timed out");
    log_request(r, 504, NULL);
}

static void on_request_dispose(void *p)
{
    request_rec_t *r = p;
    host_timer_stop(r->worker->timers, &r->timeout);
    free(r->stream_buf);
    r->stream_buf = NULL;
    if (r->co != NULL) {
        /* The client disconnected before the handler finished: cancel its I/O. */
        host_co_t *co = r->co;
        r->co = NULL;
        co->owner = NULL;
        if (!co->running)
            host_co_destroy(co);
        /* Still write the request's one access-log line (499, nginx's "client closed
         * request"); otherwise requests abandoned mid-flight (an HTTP/2 stream reset
         * or connection close) leave no trace. method and path are still valid here:
         * h2o_dispose_request runs its own access loggers just before clearing the
         * pool, and this callback runs as the pool is cleared. */
        log_request(r, 499, NULL);
    }
}

/* Dotted-quad text of an IPv4 address, as inet_ntop writes it ("%u.%u.%u.%u"). */
static void format_ipv4(char *out, const struct in_addr *a)
{
    const unsigned char *b = (const unsigned char *)&a->s_addr; /* network byte order */
    for (int i = 0; i < 4; ++i) {
        unsigned v = b[i];
        if (v >= 100)
            *out++ = (char)('0' + v / 100);
        if (v >= 10)
            *out++ = (char)('0' + v / 10 % 10);
        *out++ = (char)('0' + v % 10);
        *out++ = i < 3 ? '.' : '\0';
    }
}

/*
 * Pushes the peer's numeric address, as getnameinfo(NI_NUMERICHOST) writes it, or
 * "unknown". format_ipv4 and inet_ntop give the same text for IPv4 and unscoped IPv6
 * (v4-mapped included: "::ffff:127.0.0.1") without getnameinfo's overhead; scoped IPv6 addresses
 * (getnameinfo appends "%<interface>") and other families still go through getnameinfo.
 */
static void push_remote_addr(lua_State *L, h2o_req_t *req)
{
    struct sockaddr_storage ss;
    socklen_t sslen = req->conn->callbacks->get_peername(req->conn, (void *)&ss);
    char addr[NI_MAXHOST] = "unknown";
    if (sslen > 0) {
        const struct sockaddr_in6 *sin6 = (const void *)&ss;
        if (ss.ss_family == AF_INET && sslen >= (socklen_t)sizeof(struct sockaddr_in))
            format_ipv4(addr, &((const struct sockaddr_in *)(const void *)&ss)->sin_addr);
        else if (ss.ss_family == AF_INET6 && sslen >= (socklen_t)sizeof(*sin6) &&
                 sin6->sin6_scope_id == 0)
            inet_ntop(AF_INET6, &sin6->sin6_addr, addr, sizeof(addr));
        else
            getnameinfo((void *)&ss, sslen, addr, sizeof(addr), NULL, 0, NI_NUMERICHOST);
    }
    lua_pushstring(L, addr);
}

/* t[names[name]] = the value on top of the stack (t is a fresh plain table). */
static inline void set_named(lua_State *L, int n, int t, int name)
{
    lua_rawgeti(L, n, name);
    lua_insert(L, -2);
    lua_rawset(L, t);
}

/* Pushes the Lua request table onto L. */
static void push_request(lua_State *L, h2o_req_t *req, request_rec_t *r)
{
    int n = push_names(L, host_co_current(L)->gen);
    lua_createtable(L, 0, 10);
    int t = lua_gettop(L);
    lua_pushlstring(L, req->method.base, req->method.len);
    set_named(L, n, t, N_METHOD);
    lua_pushlstring(L, req->path_normalized.base, req->path_normalized.len);
    set_named(L, n, t, N_PATH);
    if (req->query_at != SIZE_MAX) {
        lua_pushlstring(L, req->path.base + req->query_at + 1, req->path.len - req->query_at - 1);
        set_named(L, n, t, N_QUERY);
    }
    lua_createtable(L, 0, (int)req->headers.size);
    for (size_t i = 0; i != req->headers.size; ++i) {
        h2o_header_t *h = req->headers.entries + i;
        lua_pushlstring(L, h->name->base, h->name->len); /* names are lower-case in h2o */
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isstring(L, -1)) {
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, h->value.base, h->value.len);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, h->value.base, h->value.len);
        }
        lua_rawset(L, -3);
    }
    set_named(L, n, t, N_HEADERS);
    if (req->entity.base != NULL) {
        lua_pushlstring(L, req->entity.base, req->entity.len);
        set_named(L, n, t, N_BODY);
    }
    push_remote_addr(L, req);
    set_named(L, n, t, N_REMOTE_ADDR);
    lua_pushlstring(L, r->request_id, 16);
    set_named(L, n, t, N_REQUEST_ID);
    lua_rawgeti(L, n, req->scheme == &H2O_URL_SCHEME_HTTPS ? N_HTTPS : N_HTTP);
    set_named(L, n, t, N_SCHEME);
    lua_rawgeti(L, n, req->version >= 0x200 ? N_HTTP_2 : N_HTTP_1_1);
    set_named(L, n, t, N_VERSION);
    lua_remove(L, n); /* the request table is left on top */
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    host_worker_t *w = host_current_worker;
    (void)self;
    request_rec_t *r = h2o_mem_alloc_shared(&req->pool, sizeof(*r), on_request_dispose);
    memset(r, 0, sizeof(*r));
    r->req = req;
    r->worker = w;
    r->started_us = now_us();
    r->started_ms = r->started_us / 1000; /* host_now_ms's clock (CLOCK_MONOTONIC) */
    host_timer_init(&r->timeout, on_request_timeout, r);
    make_request_id(w, r->request_id);

    size_t header_bytes = 0;
    for (size_t i = 0; i != req->headers.size; ++i)
        header_bytes += req->headers.entries[i].name->len + req->headers.entries[i].value.len + 4;
    if (req->headers.size > (size_t)host_config.max_header_count ||
        header_bytes > host_config.max_header_bytes) {
        send_json_error(req, r->request_id, 431, "Request header fields too large");
        log_request(r, 431, NULL);
        return 0;
    }
    /* The model API proxy waits for whole model answers: it gets its own deadline.
     * (Its bodies share MAX_BODY_BYTES: h2o 2.2.5 has one body limit per server, and
     * a larger one for everybody would let any client make us buffer that much.) */
    size_t prefix_len = sizeof(HOST_MODEL_PROXY_PREFIX) - 1;
    int is_proxy = req->path_normalized.len >= prefix_len &&
                   memcmp(req->path_normalized.base, HOST_MODEL_PROXY_PREFIX, prefix_len) == 0;
    uint64_t timeout_ms = is_proxy ? host_config.proxy_timeout_ms : host_config.request_timeout_ms;
    if (req->entity.base != NULL && req->entity.len > host_config.max_body) {
        send_json_error(req, r->request_id, 413, "Request body too large");
        log_request(r, 413, NULL);
        return 0;
    }
    if (w->draining) {
        send_json_error(req, r->request_id, 503, "Server is shutting down");
        log_request(r, 503, NULL);
        return 0;
    }

    uint64_t deadline = r->started_ms + timeout_ms;
    host_co_t *co = host_co_new(w, on_request_done, r, deadline);
    if (co == NULL) {
        send_json_error(req, r->request_id, 503, "Server overloaded");
        log_request(r, 503, NULL);
        return 0;
    }
    r->co = co;
    lua_rawgeti(co->L, LUA_REGISTRYINDEX, co->gen->handle_ref);
    push_request(co->L, req, r);
    if (host_co_resume(co, 1)) {
        /* The handler waits on I/O. Most requests finish inside that first resume and
         * never need the wall-clock timer (CPU-bound code is the watchdog's: it reads
         * co->deadline_ms), so it is armed only now, for what is left of the deadline. */
        uint64_t now = host_now_ms();
        host_timer_start(w->timers, &r->timeout, deadline > now ? deadline - now : 0);
    }
    return 0;
}

/*
 * h2o answers some malformed requests itself, before any handler runs (a body over
 * max_request_entity_size, broken chunked encoding, an unknown Expect), with a
 * text/plain body. Those responses are bound to the host's fallback path, so a
 * filter there rewrites them into the API's JSON error shape.
 */
typedef struct {
    h2o_ostream_t super;
    h2o_iovec_t json;
} json_error_ostream_t;

static void json_error_do_send(h2o_ostream_t *self, h2o_req_t *req, h2o_iovec_t *bufs,
                               size_t bufcnt, h2o_send_state_t state)
{
    json_error_ostream_t *o = (json_error_ostream_t *)self;
    (void)bufs;
    (void)bufcnt;
    /* h2o_send_inline delivers the whole text body in one final call: swap it. */
    h2o_ostream_send_next(&o->super, req, &o->json, o->json.len != 0 ? 1 : 0, state);
    o->json.len = 0;
}

static void on_setup_error_ostream(h2o_filter_t *self, h2o_req_t *req, h2o_ostream_t **slot)
{
    (void)self;
    if (req->res.status >= 400) {
        char request_id[17] = "0000000000000000";
        if (host_current_worker != NULL)
            make_request_id(host_current_worker, request_id);
        const char *msg = req->res.status == 413 ? "Request body too large" : req->res.reason;
        char *body = h2o_mem_alloc_pool(&req->pool, 256);
        int n = snprintf(body, 256, "{\"error\":\"%s\",\"request_id\":\"%s\"}", msg, request_id);
        h2o_headers_t *headers = &req->res.headers;
        for (size_t i = 0; i != headers->size; ++i)
            if (headers->entries[i].name == &H2O_TOKEN_CONTENT_TYPE->buf)
                headers->entries[i].value = h2o_iovec_init(H2O_STRLIT("application/json"));
        h2o_add_header_by_str(&req->pool, headers, H2O_STRLIT("x-request-id"), 0, NULL,
                              h2o_strdup(&req->pool, request_id, 16).base, 16);
        req->res.content_length = (size_t)n;
        json_error_ostream_t *o = (void *)h2o_add_ostream(req, sizeof(*o), slot);
        o->super.do_send = json_error_do_send;
        o->json = h2o_iovec_init(body, (size_t)n);
        host_log_request(request_id, req->method.base, req->method.len, req->path.base,
                         req->query_at != SIZE_MAX ? req->query_at : req->path.len, req->res.status,
                         0, NULL);
        slot = &o->super.next;
    }
    h2o_setup_next_ostream(req, slot);
}

static void on_connection_close(void *data)
{
    (void)data;
    atomic_fetch_sub(&host_open_connections, 1);
}

static void on_accept(h2o_socket_t *listener, const char *err)
{
    host_worker_t *w = listener->data;
    if (err != NULL)
        return;
    for (int i = 0; i < 16; ++i) {
        h2o_socket_t *sock = h2o_evloop_socket_accept(listener);
        if (sock == NULL)
            return;
        if (atomic_fetch_add(&host_open_connections, 1) >= host_config.max_connections) {
            atomic_fetch_sub(&host_open_connections, 1);
            h2o_socket_close(sock);
            continue;
        }
        sock->on_close.cb = on_connection_close;
        sock->on_close.data = w;
        h2o_accept(&w->accept_ctx, sock);
    }
}

static void worker_reload(host_worker_t *w)
{
    char err[2048];
    host_gen_t *gen = host_vm_build("app.server", "handle", err, sizeof(err));
    if (gen == NULL) {
        host_log("error", "worker %d: reload failed, keeping generation %u: %s", w->index,
                 w->gen->id, err);
        return;
    }
    host_gen_t *old = w->gen;
    w->gen = gen;
    old->retired = 1;
    if (old->refs == 0)
        host_vm_close(old);
    host_vm_call_start(gen, w->index);
}

static void close_listener(host_worker_t *w)
{
    if (w->listener != NULL) {
        h2o_socket_read_stop(w->listener);
        h2o_socket_close(w->listener);
        w->listener = NULL;
    }
}

static void on_control(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    host_worker_t *w = H2O_STRUCT_FROM_MEMBER(host_worker_t, control, receiver);
    while (!h2o_linklist_is_empty(messages)) {
        control_msg_t *msg = H2O_STRUCT_FROM_MEMBER(control_msg_t, super.link, messages->next);
        h2o_linklist_unlink(&msg->super.link);
        if (msg->type == CONTROL_RELOAD) {
            worker_reload(w);
        } else if (msg->type == CONTROL_DRAIN && !w->draining) {
            w->draining = 1;
            w->drain_deadline_ms = host_now_ms() + host_config.drain_timeout_ms;
            close_listener(w);
            h2o_context_request_shutdown(&w->ctx);
        }
        free(msg);
    }
}

static int create_listener(void)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res;
    char port[16];
    snprintf(port, sizeof(port), "%d", host_config.port);
    int rc = getaddrinfo(host_config.host, port, &hints, &res);
    if (rc != 0) {
        host_log("error", "cannot resolve HOST %s: %s", host_config.host, gai_strerror(rc));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int on = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0) {
        host_log("error", "cannot listen on %s:%d: %s", host_config.host, host_config.port,
                 strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    freeaddrinfo(res);
    return fd;
}

int host_server_init(void)
{
    h2o_config_init(&globalconf);
    globalconf.server_name = h2o_iovec_init(H2O_STRLIT("aicode"));
    /* h2o's default is 1 GiB; keep a little headroom so our own 413 (JSON) answers. */
    globalconf.max_request_entity_size = host_config.max_body;
    globalconf.http1.req_timeout = host_config.idle_timeout_ms;
    globalconf.http2.idle_timeout = host_config.idle_timeout_ms;
    h2o_hostconf_t *hostconf =
        h2o_config_register_host(&globalconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *pathconf = h2o_config_register_path(hostconf, "/", 0);
    h2o_handler_t *handler = h2o_create_handler(pathconf, sizeof(*handler));
    handler->on_req = on_req;
    h2o_filter_t *error_filter = h2o_create_filter(&hostconf->fallback_path, sizeof(*error_filter));
    error_filter->on_setup_ostream = on_setup_error_ostream;

    if (host_config.tls_cert != NULL) {
        ssl_ctx = SSL_CTX_new(TLS_server_method());
        SSL_CTX_set_min_proto_version(ssl_ctx, TLS1_2_VERSION);
        SSL_CTX_set_options(ssl_ctx, SSL_OP_NO_COMPRESSION);
        /* Say which file failed and why (OpenSSL's reason, e.g. "no start line" for
         * a file that is not PEM, "key values mismatch"): "cannot load" alone leaves
         * the operator guessing. The message also goes to stderr, since LOG_FILE may
         * point elsewhere and serve exits right after. */
        const char *what = NULL;
        if (SSL_CTX_use_certificate_chain_file(ssl_ctx, host_config.tls_cert) != 1)
            what = "TLS_CERT";
        else if (SSL_CTX_use_PrivateKey_file(ssl_ctx, host_config.tls_key, SSL_FILETYPE_PEM) != 1)
            what = "TLS_KEY";
        else if (SSL_CTX_check_private_key(ssl_ctx) != 1)
            what = "TLS_KEY (does not match TLS_CERT)";
        if (what != NULL) {
            const char *reason = ERR_reason_error_string(ERR_peek_error());
            const char *file = what[4] == 'C' ? host_config.tls_cert : host_config.tls_key;
            host_log("error", "cannot load %s %s: %s", what, file,
                     reason != NULL ? reason : "unknown error");
            fprintf(stderr, "aicode: cannot load %s %s: %s\n", what, file,
                    reason != NULL ? reason : "unknown error");
            return -1;
        }
        h2o_ssl_register_alpn_protocols(ssl_ctx, h2o_http2_alpn_protocols);
    }
    return 0;
}

static void *worker_main(void *arg)
{
    host_worker_t *w = arg;
    host_current_worker = w;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are handled by the main thread */
    host_watchdog_thread_init();            /* except the watchdog's */
    host_vm_call_start(w->gen, w->index);
    host_log_batch_start();

    while (!w->draining || w->inflight != 0) {
        h2o_evloop_run(w->loop, 50);
        host_log_flush(); /* this iteration's access-log lines, one write */
        if (w->draining && host_now_ms() > w->drain_deadline_ms) {
            host_log("warn", "worker %d: drain timeout with %zu requests in flight", w->index,
                     w->inflight);
            break;
        }
    }
    /* Let the last responses reach their sockets before the process exits. */
    uint64_t flush_until = host_now_ms() + 200;
    while (host_now_ms() < flush_until && atomic_load(&host_open_connections) != 0) {
        h2o_evloop_run(w->loop, 20);
        host_log_flush();
    }
    host_log_flush();
    host_watchdog_thread_exit();
    return NULL;
}

int host_server_start(void)
{
    nworkers = host_config.workers;
    workers = calloc((size_t)nworkers, sizeof(*workers));
    for (int i = 0; i < nworkers; ++i) {
        host_worker_t *w = &workers[i];
        char err[4096];
        w->index = i;
        getrandom(&w->request_id_salt, sizeof(w->request_id_salt), 0);
        w->loop = h2o_evloop_create();
        h2o_context_init(&w->ctx, w->loop, &globalconf);
        w->accept_ctx.ctx = &w->ctx;
        w->accept_ctx.hosts = globalconf.hosts;
        w->accept_ctx.ssl_ctx = ssl_ctx;
        w->timers = host_timers_create(w->loop);
        /* Build on this thread but mark the worker current so modules see their owner. */
        host_current_worker = w;
        w->http = host_http_create(w);
        w->gen = host_vm_build("app.server", "handle", err, sizeof(err));
        host_current_worker = NULL;
        if (w->timers == NULL || w->http == NULL || w->gen == NULL) {
            host_log("error", "cannot start worker %d: %s", i,
                     w->gen == NULL ? err : "out of resources");
            return -1;
        }
        int fd = create_listener();
        if (fd < 0)
            return -1;
        w->listener = h2o_evloop_socket_create(w->loop, fd, H2O_SOCKET_FLAG_DONT_READ);
        w->listener->data = w;
        h2o_socket_read_start(w->listener, on_accept);
        w->queue = h2o_multithread_create_queue(w->loop);
        h2o_multithread_register_receiver(w->queue, &w->control, on_control);
    }
    for (int i = 0; i < nworkers; ++i)
        pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
    /* After the workers exist: the watchdog signals their threads. Its period follows
     * the shortest deadline a coroutine gets (streams get hours: never the shortest). */
    uint64_t shortest = host_config.request_timeout_ms < host_config.proxy_timeout_ms
                            ? host_config.request_timeout_ms
                            : host_config.proxy_timeout_ms;
    if (host_watchdog_start(workers, nworkers, host_watchdog_period_ms(shortest)) != 0) {
        host_log("error", "cannot start the coroutine watchdog");
        return -1;
    }
    return 0;
}

static void broadcast(int type)
{
    for (int i = 0; i < nworkers; ++i) {
        control_msg_t *msg = calloc(1, sizeof(*msg));
        msg->type = type;
        h2o_multithread_send_message(&workers[i].control, &msg->super);
    }
}

void host_server_reload(void)
{
    char err[4096];
    pthread_mutex_lock(&reload_lock);
    /* Validate once off to the side so a broken edit is reported once, not per worker. */
    host_gen_t *probe = host_vm_build("app.server", "handle", err, sizeof(err));
    if (probe == NULL) {
        host_log("error", "reload rejected, old code keeps serving: %s", err);
    } else {
        host_vm_close(probe);
        ++host_reload_count;
        broadcast(CONTROL_RELOAD);
        host_log("info", "scripts reloaded");
    }
    pthread_mutex_unlock(&reload_lock);
}

void host_server_drain_and_stop(void)
{
    host_log("info", "draining: no new connections, waiting for in-flight requests");
    broadcast(CONTROL_DRAIN);
    for (int i = 0; i < nworkers; ++i)
        pthread_join(workers[i].thread, NULL);
    host_log("info", "stopped");
}
