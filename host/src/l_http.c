/*
 * host.http over libcurl multi, nested in the h2o evloop.
 *
 * h2o 2.2.5's evloop cannot watch a foreign fd for writability, so curl's sockets
 * go into a private epoll set; the epoll fd is wrapped as an h2o socket and
 * becomes readable whenever any curl socket is ready (toolchain-facts §9).
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <curl/curl.h>
#include <lauxlib.h>

#include "host/http.h"
#include "host/sched.h"
#include "host/secret.h"

#define DEFAULT_TIMEOUT_MS 10000
#define MAX_TIMEOUT_MS 3600000
#define DEFAULT_MAX_BODY (1024 * 1024)
#define MAX_MAX_BODY (64 * 1024 * 1024)

struct host_http_t {
    host_worker_t *worker;
    CURLM *multi;
    int epfd;
    h2o_socket_t *sock;
    host_timer_t timer;
};

typedef struct {
    host_http_t *http;
    host_co_t *co;
    CURL *easy;
    struct curl_slist *req_headers;
    char *req_body;
    char *body;
    size_t body_len, body_cap, max_body;
    char *hdrs; /* raw "name: value\r\n" lines of the final response */
    size_t hdrs_len, hdrs_cap;
    int too_large;
    /* Streaming (host.http.stream): body bytes wait in `body` until read(). */
    int stream, lua_alive, in_multi, done, headers_done, paused, wait_mode;
    long status;
    CURLcode result;
    host_co_t *waiter;
    host_timer_t wake;
} http_op_t;

enum { WAIT_NONE, WAIT_HEADERS, WAIT_DATA };
#define STREAM_BUFFER_MAX (1024 * 1024) /* above this, the transfer pauses until read() */

static int buf_append(char **buf, size_t *len, size_t *cap, const char *src, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t want = *cap != 0 ? *cap : 1024;
        while (want < *len + n + 1)
            want *= 2;
        char *p = realloc(*buf, want);
        if (p == NULL)
            return -1;
        *buf = p;
        *cap = want;
    }
    memcpy(*buf + *len, src, n);
    *len += n;
    (*buf)[*len] = '\0';
    return 0;
}

static void stream_schedule_wake(http_op_t *op);

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *data)
{
    http_op_t *op = data;
    size_t n = size * nmemb;
    if (op->stream) {
        if (op->body_len >= STREAM_BUFFER_MAX) {
            op->paused = 1;
            return CURL_WRITEFUNC_PAUSE; /* curl keeps the data and delivers it again later */
        }
        if (buf_append(&op->body, &op->body_len, &op->body_cap, ptr, n) != 0)
            return 0;
        stream_schedule_wake(op);
        return n;
    }
    if (op->body_len + n > op->max_body) {
        op->too_large = 1;
        return 0; /* makes curl fail the transfer with CURLE_WRITE_ERROR */
    }
    if (buf_append(&op->body, &op->body_len, &op->body_cap, ptr, n) != 0)
        return 0;
    return n;
}

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *data)
{
    http_op_t *op = data;
    size_t n = size * nmemb;
    /* A new status line (after 100-continue or a redirect) starts a new header set. */
    if (n >= 5 && memcmp(ptr, "HTTP/", 5) == 0) {
        op->hdrs_len = 0;
        return n;
    }
    if (op->stream && (n == 2 || n == 1) && (ptr[0] == '\r' || ptr[0] == '\n')) {
        /* End of a header block: the final one unless it was an interim 1xx. */
        long status = 0;
        curl_easy_getinfo(op->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status >= 200) {
            op->status = status;
            op->headers_done = 1;
            stream_schedule_wake(op);
        }
        return n;
    }
    if (op->hdrs_len + n > 64 * 1024)
        return 0;
    if (buf_append(&op->hdrs, &op->hdrs_len, &op->hdrs_cap, ptr, n) != 0)
        return 0;
    return n;
}

static void op_free(http_op_t *op)
{
    if (op->stream)
        host_timer_stop(op->http->worker->timers, &op->wake);
    if (op->easy != NULL) {
        if (!op->stream || op->in_multi)
            curl_multi_remove_handle(op->http->multi, op->easy);
        curl_easy_cleanup(op->easy);
    }
    curl_slist_free_all(op->req_headers);
    free(op->req_body);
    free(op->body);
    free(op->hdrs);
    free(op);
}

static void op_cancel(void *_op)
{
    op_free(_op);
}

/* Pushes the response headers as a table of lower-cased names; repeats are joined. */
static void push_headers(lua_State *L, const http_op_t *op)
{
    lua_newtable(L);
    const char *p = op->hdrs, *end = op->hdrs + op->hdrs_len;
    while (p != NULL && p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = eol != NULL ? eol : end;
        const char *colon = memchr(p, ':', (size_t)(line_end - p));
        if (colon != NULL && colon > p) {
            luaL_Buffer name;
            luaL_buffinit(L, &name);
            for (const char *c = p; c < colon; ++c)
                luaL_addchar(&name, (char)tolower((unsigned char)*c));
            luaL_pushresult(&name); /* t name */
            const char *v = colon + 1, *ve = line_end;
            while (v < ve && (*v == ' ' || *v == '\t'))
                ++v;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                --ve;
            lua_pushvalue(L, -1);
            lua_rawget(L, -3); /* t name old */
            if (lua_isstring(L, -1)) {
                lua_pushliteral(L, ", ");
                lua_pushlstring(L, v, (size_t)(ve - v));
                lua_concat(L, 3); /* t name joined */
            } else {
                lua_pop(L, 1);
                lua_pushlstring(L, v, (size_t)(ve - v)); /* t name value */
            }
            lua_rawset(L, -3);
        }
        p = eol != NULL ? eol + 1 : NULL;
    }
}

static const char *error_kind(CURLcode rc, const http_op_t *op)
{
    if (op->too_large)
        return "too large";
    switch (rc) {
    case CURLE_ABORTED_BY_CALLBACK:
        return "cancelled";
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
        return "connect";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return "dns";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
        return "tls";
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_TOO_MANY_REDIRECTS:
        return "blocked";
    default:
        return "error";
    }
}

static void op_complete(http_op_t *op, CURLcode rc)
{
    host_co_t *co = op->co;
    lua_State *L = co->L;
    host_co_clear_op(co);
    int nres;
    if (rc == CURLE_OK) {
        long status = 0;
        curl_easy_getinfo(op->easy, CURLINFO_RESPONSE_CODE, &status);
        lua_createtable(L, 0, 3);
        lua_pushinteger(L, status);
        lua_setfield(L, -2, "status");
        push_headers(L, op);
        lua_setfield(L, -2, "headers");
        lua_pushlstring(L, op->body != NULL ? op->body : "", op->body_len);
        lua_setfield(L, -2, "body");
        nres = 1;
    } else {
        lua_pushnil(L);
        lua_pushstring(L, error_kind(rc, op));
        nres = 2;
    }
    op_free(op);
    host_co_resume(co, nres);
}

static void drain_finished(host_http_t *h)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(h->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        http_op_t *op = NULL;
        CURLcode rc = msg->data.result;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&op);
        if (op->stream) {
            curl_multi_remove_handle(h->multi, op->easy);
            op->in_multi = 0;
            op->done = 1;
            op->result = rc;
            stream_schedule_wake(op);
        } else {
            op_complete(op, rc);
        }
    }
}

static void on_epoll_ready(h2o_socket_t *sock, const char *err)
{
    host_http_t *h = sock->data;
    struct epoll_event evs[64];
    int n, running;
    (void)err;
    do {
        n = epoll_wait(h->epfd, evs, 64, 0);
        for (int i = 0; i < n; ++i) {
            int flags = 0;
            if (evs[i].events & EPOLLIN)
                flags |= CURL_CSELECT_IN;
            if (evs[i].events & EPOLLOUT)
                flags |= CURL_CSELECT_OUT;
            if (evs[i].events & (EPOLLERR | EPOLLHUP))
                flags |= CURL_CSELECT_ERR;
            curl_multi_socket_action(h->multi, evs[i].data.fd, flags, &running);
        }
    } while (n == 64);
    drain_finished(h);
}

static void on_curl_timer(host_timer_t *timer)
{
    host_http_t *h = timer->data;
    int running;
    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    drain_finished(h);
}

static int on_curl_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    host_http_t *h = userp;
    (void)easy;
    struct epoll_event ev = {0};
    ev.data.fd = s;
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(h->epfd, EPOLL_CTL_DEL, s, NULL);
        curl_multi_assign(h->multi, s, NULL);
        return 0;
    }
    if (what & CURL_POLL_IN)
        ev.events |= EPOLLIN;
    if (what & CURL_POLL_OUT)
        ev.events |= EPOLLOUT;
    if (socketp == NULL) {
        epoll_ctl(h->epfd, EPOLL_CTL_ADD, s, &ev);
        curl_multi_assign(h->multi, s, h); /* any non-NULL marks "registered" */
    } else {
        epoll_ctl(h->epfd, EPOLL_CTL_MOD, s, &ev);
    }
    return 0;
}

static int on_curl_timer_change(CURLM *multi, long timeout_ms, void *userp)
{
    host_http_t *h = userp;
    (void)multi;
    if (timeout_ms < 0)
        host_timer_stop(h->worker->timers, &h->timer);
    else
        host_timer_start(h->worker->timers, &h->timer, (uint64_t)timeout_ms);
    return 0;
}

host_http_t *host_http_create(host_worker_t *w)
{
    host_http_t *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    h->worker = w;
    h->epfd = epoll_create1(EPOLL_CLOEXEC);
    h->multi = curl_multi_init();
    if (h->epfd < 0 || h->multi == NULL) {
        if (h->epfd >= 0)
            close(h->epfd);
        if (h->multi != NULL)
            curl_multi_cleanup(h->multi);
        free(h);
        return NULL;
    }
    host_timer_init(&h->timer, on_curl_timer, h);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer_change);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    h->sock = h2o_evloop_socket_create(w->loop, h->epfd, H2O_SOCKET_FLAG_DONT_READ);
    h->sock->data = h;
    h2o_socket_read_start(h->sock, on_epoll_ready);
    return h;
}

void host_http_destroy(host_http_t *h)
{
    if (h == NULL)
        return;
    host_timer_stop(h->worker->timers, &h->timer);
    curl_multi_cleanup(h->multi);
    h2o_socket_read_stop(h->sock);
    h2o_socket_close(h->sock);
    free(h);
}

static int opt_int(lua_State *L, int idx, const char *key, lua_Integer def, lua_Integer max)
{
    lua_getfield(L, idx, key);
    lua_Integer v = luaL_optinteger(L, -1, def);
    lua_pop(L, 1);
    if (v < 0 || v > max)
        return (int)luaL_error(L, "http.request: %s out of range", key);
    return (int)v;
}

static int opt_bool(lua_State *L, int idx, const char *key)
{
    lua_getfield(L, idx, key);
    int v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

static int valid_token(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; ++i)
        if (!isalnum((unsigned char)s[i]) && strchr("!#$%&'*+-.^_`|~", s[i]) == NULL)
            return 0;
    return 1;
}

static int has_crlf(const char *s, size_t n)
{
    return memchr(s, '\r', n) != NULL || memchr(s, '\n', n) != NULL || memchr(s, '\0', n) != NULL;
}

/*
 * Reads the options table at index 1 and builds the transfer. Returns the op, or
 * NULL with `nil, "blocked"` pushed when the URL's scheme is not allowed. Misuse
 * (bad types, invalid headers) raises.
 */
static http_op_t *op_setup(lua_State *L, host_worker_t *w, int stream)
{
    lua_getfield(L, 1, "url");
    const char *url = luaL_checkstring(L, -1);
    lua_getfield(L, 1, "method");
    size_t method_len;
    const char *method = luaL_optlstring(L, -1, "GET", &method_len);
    if (!valid_token(method, method_len))
        luaL_error(L, "http.request: invalid method");
    /* Streams may run without a total deadline (0): an idle timeout ends dead ones. */
    int timeout_ms = opt_int(L, 1, "timeout_ms", stream ? 0 : DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS);
    int idle_s = opt_int(L, 1, "idle_timeout_s", 120, 3600);
    int max_body = opt_int(L, 1, "max_body", DEFAULT_MAX_BODY, MAX_MAX_BODY);
    int allow_http = opt_bool(L, 1, "allow_http");
    int follow = opt_bool(L, 1, "follow_redirects");

    /* Refuse before creating anything: user-supplied URLs are https only. */
    if (strncasecmp(url, "https://", 8) != 0 &&
        !(allow_http && strncasecmp(url, "http://", 7) == 0)) {
        lua_pushnil(L);
        lua_pushliteral(L, "blocked");
        return NULL;
    }

    http_op_t *op = calloc(1, sizeof(*op));
    if (op == NULL)
        luaL_error(L, "out of memory");
    op->http = w->http;
    op->stream = stream;
    op->max_body = (size_t)max_body;
    op->easy = curl_easy_init();
    if (op->easy == NULL) {
        op_free(op);
        luaL_error(L, "out of memory");
    }

    /* Request headers: validated so a value cannot smuggle a second header. */
    lua_getfield(L, 1, "headers");
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2) != 0) {
            size_t nlen, vlen;
            /* A value may be a host.secret handle: resolved here, never a Lua string. */
            const char *value = host_secret_value(L, -1, &vlen);
            if (lua_type(L, -2) != LUA_TSTRING ||
                (value == NULL && lua_type(L, -1) != LUA_TSTRING)) {
                op_free(op);
                luaL_error(L,
                           "http.request: header names must be strings, values strings or secrets");
            }
            const char *name = lua_tolstring(L, -2, &nlen);
            if (value == NULL)
                value = lua_tolstring(L, -1, &vlen);
            if (!valid_token(name, nlen) || has_crlf(value, vlen)) {
                op_free(op);
                luaL_error(L, "http.request: invalid header");
            }
            /* Built in C memory (curl copies it): a secret never becomes a Lua string. */
            char *line = malloc(nlen + vlen + 3);
            if (line == NULL) {
                op_free(op);
                luaL_error(L, "out of memory");
            }
            memcpy(line, name, nlen);
            memcpy(line + nlen, ": ", 2);
            memcpy(line + nlen + 2, value, vlen);
            line[nlen + 2 + vlen] = '\0';
            op->req_headers = curl_slist_append(op->req_headers, line);
            explicit_bzero(line, nlen + vlen + 2);
            free(line);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    /* libcurl adds "Expect: 100-continue" to large bodies, costing a round trip. */
    op->req_headers = curl_slist_append(op->req_headers, "Expect:");

    lua_getfield(L, 1, "body");
    if (!lua_isnil(L, -1)) {
        size_t blen;
        const char *b = luaL_checklstring(L, -1, &blen);
        op->req_body = malloc(blen + 1);
        if (op->req_body == NULL) {
            op_free(op);
            luaL_error(L, "out of memory");
        }
        memcpy(op->req_body, b, blen);
        curl_easy_setopt(op->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
        curl_easy_setopt(op->easy, CURLOPT_POSTFIELDS, op->req_body);
    }
    lua_pop(L, 1);

    CURL *e = op->easy;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, op->req_headers);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, allow_http ? "http,https" : "https");
    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, allow_http ? "http,https" : "https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, follow ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)(timeout_ms != 0 && timeout_ms < 10000 ? timeout_ms : 10000));
    if (stream) {
        /* A stream that stays silent this long is dead (keepalives count as data). */
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (long)idle_s);
    }
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, op);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, op);
    curl_easy_setopt(e, CURLOPT_PRIVATE, op);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "aicode");
    if (!stream)
        curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    return op;
}

static int l_http_request(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    host_worker_t *w = host_current_worker;
    if (w == NULL || w->http == NULL || host_co_current(L) == NULL)
        return luaL_error(L, "host.http.request can only be used while handling a request or task");
    http_op_t *op = op_setup(L, w, 0);
    if (op == NULL)
        return 2; /* nil, "blocked" */
    op->co = host_co_current(L);
    lua_settop(L, 0);
    if (curl_multi_add_handle(w->http->multi, op->easy) != CURLM_OK) {
        op_free(op);
        lua_pushnil(L);
        lua_pushliteral(L, "error");
        return 2;
    }
    return host_co_yield_op(L, op, op_cancel);
}

/* --- host.http.stream ------------------------------------------------------
 * The handle is owned jointly by its Lua userdata and by the transfer; curl
 * callbacks never resume Lua directly (Lua could then call back into curl from
 * inside a callback): they schedule a zero-delay wake on the loop instead. */

#define STREAM_MT "host.http.stream"

typedef struct {
    http_op_t *op;
} stream_ud_t;

static void stream_maybe_free(http_op_t *op)
{
    if (!op->lua_alive && (op->done || !op->in_multi))
        op_free(op);
}

static int push_stream_error(lua_State *L, http_op_t *op)
{
    lua_pushnil(L);
    lua_pushstring(L, error_kind(op->result, op));
    return 2;
}

/* Pushes the buffered bytes (and resumes a transfer paused on a full buffer). */
static void push_stream_chunk(lua_State *L, http_op_t *op)
{
    lua_pushlstring(L, op->body, op->body_len);
    op->body_len = 0;
    if (op->paused) {
        op->paused = 0;
        curl_easy_pause(op->easy, CURLPAUSE_CONT);
    }
}

static void on_stream_wake(host_timer_t *timer)
{
    http_op_t *op = timer->data;
    host_co_t *co = op->waiter;
    if (co == NULL)
        return;
    lua_State *L = co->L;
    int n;
    if (op->wait_mode == WAIT_HEADERS) {
        if (op->headers_done) {
            lua_pushinteger(L, op->status);
            push_headers(L, op);
            n = 2;
        } else if (op->done) {
            n = push_stream_error(L, op);
        } else {
            return;
        }
    } else {
        if (op->body_len != 0) {
            push_stream_chunk(L, op);
            n = 1;
        } else if (op->done) {
            if (op->result == CURLE_OK) {
                lua_pushnil(L);
                n = 1;
            } else {
                n = push_stream_error(L, op);
            }
        } else {
            return;
        }
    }
    op->waiter = NULL;
    op->wait_mode = WAIT_NONE;
    host_co_clear_op(co);
    host_co_resume(co, n);
}

static void stream_schedule_wake(http_op_t *op)
{
    if (op->waiter != NULL && !host_timer_is_armed(&op->wake))
        host_timer_start(op->http->worker->timers, &op->wake, 0);
}

static void stream_wait_cancel(void *_op)
{
    http_op_t *op = _op;
    op->waiter = NULL;
    op->wait_mode = WAIT_NONE;
    host_timer_stop(op->http->worker->timers, &op->wake);
}

static int l_http_stream(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    host_worker_t *w = host_current_worker;
    if (w == NULL || w->http == NULL || host_co_current(L) == NULL)
        return luaL_error(L, "host.http.stream can only be used while handling a request or task");
    http_op_t *op = op_setup(L, w, 1);
    if (op == NULL)
        return 2;
    host_timer_init(&op->wake, on_stream_wake, op);
    if (curl_multi_add_handle(w->http->multi, op->easy) != CURLM_OK) {
        op_free(op);
        lua_pushnil(L);
        lua_pushliteral(L, "error");
        return 2;
    }
    op->in_multi = 1;
    op->lua_alive = 1;
    stream_ud_t *ud = lua_newuserdatauv(L, sizeof(*ud), 0);
    ud->op = op;
    luaL_setmetatable(L, STREAM_MT);
    return 1;
}

static http_op_t *check_stream(lua_State *L)
{
    stream_ud_t *ud = luaL_checkudata(L, 1, STREAM_MT);
    if (ud->op == NULL)
        luaL_error(L, "stream is closed");
    return ud->op;
}

static int stream_wait(lua_State *L, http_op_t *op, int mode)
{
    if (op->waiter != NULL)
        return luaL_error(L, "another coroutine is already waiting on this stream");
    op->waiter = host_co_current(L);
    op->wait_mode = mode;
    lua_settop(L, 1); /* the suspended coroutine keeps the handle alive */
    return host_co_yield_op(L, op, stream_wait_cancel);
}

/* s:headers() -> status, headers | nil, err  (yields until the response starts) */
static int l_stream_headers(lua_State *L)
{
    http_op_t *op = check_stream(L);
    if (op->headers_done) {
        lua_pushinteger(L, op->status);
        push_headers(L, op);
        return 2;
    }
    if (op->done)
        return push_stream_error(L, op);
    return stream_wait(L, op, WAIT_HEADERS);
}

/* s:read() -> chunk | nil (end) | nil, err */
static int l_stream_read(lua_State *L)
{
    http_op_t *op = check_stream(L);
    if (op->body_len != 0) {
        push_stream_chunk(L, op);
        return 1;
    }
    if (op->done) {
        if (op->result == CURLE_OK) {
            lua_pushnil(L);
            return 1;
        }
        return push_stream_error(L, op);
    }
    return stream_wait(L, op, WAIT_DATA);
}

/* s:close(): aborts the transfer (idempotent). A coroutine waiting on the
 * stream (another one than the caller) is woken with nil, "cancelled". */
static int l_stream_close(lua_State *L)
{
    stream_ud_t *ud = luaL_checkudata(L, 1, STREAM_MT);
    http_op_t *op = ud->op;
    if (op == NULL)
        return 0;
    if (op->waiter != NULL && op->waiter != host_co_current(L)) {
        if (op->in_multi) {
            curl_multi_remove_handle(op->http->multi, op->easy);
            op->in_multi = 0;
        }
        op->done = 1;
        op->result = CURLE_ABORTED_BY_CALLBACK;
        op->body_len = 0;
        stream_schedule_wake(op); /* the waiter's stack keeps the handle; freed at gc */
        return 0;
    }
    ud->op = NULL;
    op->lua_alive = 0;
    op->waiter = NULL;
    if (op->in_multi) {
        curl_multi_remove_handle(op->http->multi, op->easy);
        op->in_multi = 0;
    }
    op->done = 1;
    stream_maybe_free(op);
    return 0;
}

int host_open_http(lua_State *L)
{
    static const luaL_Reg methods[] = {{"headers", l_stream_headers},
                                       {"read", l_stream_read},
                                       {"close", l_stream_close},
                                       {NULL, NULL}};
    if (luaL_newmetatable(L, STREAM_MT)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_stream_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_stream_close);
        lua_setfield(L, -2, "__close");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
    static const luaL_Reg funcs[] = {
        {"request", l_http_request}, {"stream", l_http_stream}, {NULL, NULL}};
    luaL_newlib(L, funcs);
    return 1;
}
