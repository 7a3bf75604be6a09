#include <ctype.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>

#include "host/log.h"

#define MAX_SECRETS 32
#define LINE_MAX_BYTES 16384

static int log_fd = 2;
static char *secrets[MAX_SECRETS];
static size_t secret_lens[MAX_SECRETS];
static int nsecrets;
static pthread_mutex_t secrets_lock = PTHREAD_MUTEX_INITIALIZER;

int host_log_open(const char *path)
{
    if (path == NULL)
        return 0;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    log_fd = fd;
    return 0;
}

void host_log_register_secret(const char *value)
{
    if (value == NULL || strlen(value) < 8)
        return;
    pthread_mutex_lock(&secrets_lock);
    if (nsecrets < MAX_SECRETS) {
        secrets[nsecrets] = strdup(value);
        secret_lens[nsecrets] = strlen(value);
        ++nsecrets;
    }
    pthread_mutex_unlock(&secrets_lock);
}

static int is_token_char(int c)
{
    return isalnum(c) || c == '-' || c == '_' || c == '.' || c == '+' || c == '/' || c == '=';
}

/* Length of a credential-shaped token starting at p, or 0. */
static size_t credential_at(const char *p, const char *end)
{
    static const char *prefixes[] = {"eyJ",  "ghp_",        "gho_", "ghu_",  "ghs_",
                                     "ghr_", "github_pat_", "sk-",  "xoxb-", NULL};
    for (int i = 0; prefixes[i] != NULL; ++i) {
        size_t plen = strlen(prefixes[i]);
        if ((size_t)(end - p) < plen || memcmp(p, prefixes[i], plen) != 0)
            continue;
        size_t n = plen;
        while (p + n < end && is_token_char((unsigned char)p[n]))
            ++n;
        if (n >= plen + 12)
            return n;
    }
    /* "Bearer <anything>" */
    if (end - p > 7 && strncasecmp(p, "bearer ", 7) == 0) {
        size_t n = 7;
        while (p + n < end && is_token_char((unsigned char)p[n]))
            ++n;
        if (n > 7)
            return n;
    }
    return 0;
}

size_t host_redact(const char *in, size_t len, char *out, size_t cap)
{
    static const char mark[] = "[redacted]";
    const char *p = in, *end = in + len;
    size_t o = 0;
    if (cap == 0)
        return 0;
    pthread_mutex_lock(&secrets_lock);
    while (p < end && o + 1 < cap) {
        size_t skip = 0;
        /* Only test at token boundaries, so "task-1234" is never mistaken for "sk-...". */
        int boundary = p == in || !is_token_char((unsigned char)p[-1]) || p[-1] == '=';
        for (int i = 0; i < nsecrets && skip == 0; ++i)
            if ((size_t)(end - p) >= secret_lens[i] && memcmp(p, secrets[i], secret_lens[i]) == 0)
                skip = secret_lens[i];
        if (skip == 0 && boundary)
            skip = credential_at(p, end);
        if (skip != 0) {
            for (size_t i = 0; i < sizeof(mark) - 1 && o + 1 < cap; ++i)
                out[o++] = mark[i];
            p += skip;
        } else {
            out[o++] = *p++;
        }
    }
    pthread_mutex_unlock(&secrets_lock);
    out[o] = '\0';
    return o;
}

typedef struct {
    char buf[LINE_MAX_BYTES];
    size_t len;
} line_t;

static void put(line_t *l, const char *s, size_t n)
{
    if (l->len + n >= sizeof(l->buf) - 2)
        n = sizeof(l->buf) - 2 - l->len;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void put_str(line_t *l, const char *s)
{
    put(l, s, strlen(s));
}

/* JSON string with control characters escaped, so a log line is always one line. */
static void put_json_string(line_t *l, const char *s, size_t n)
{
    put(l, "\"", 1);
    for (size_t i = 0; i < n; ++i) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            put(l, esc, 2);
        } else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            put(l, esc, 6);
        } else {
            put(l, (const char *)&c, 1);
        }
    }
    put(l, "\"", 1);
}

static void put_time(line_t *l)
{
    struct timeval tv;
    struct tm tm;
    char ts[40];
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - n, ".%03ldZ", (long)(tv.tv_usec / 1000));
    put_str(l, "{\"time\":\"");
    put_str(l, ts);
    put_str(l, "\"");
}

static void emit(line_t *l)
{
    static __thread char *tl_buf; /* per thread: lines are written concurrently */
    if (tl_buf == NULL)
        tl_buf = malloc(LINE_MAX_BYTES + 64);
    put(l, "}", 1);
    size_t n = host_redact(l->buf, l->len, tl_buf, LINE_MAX_BYTES + 62);
    tl_buf[n++] = '\n';
    ssize_t rc = write(log_fd, tl_buf, n);
    (void)rc;
}

void host_log(const char *level, const char *fmt, ...)
{
    line_t l = {.len = 0};
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    put_time(&l);
    put_str(&l, ",\"level\":");
    put_json_string(&l, level, strlen(level));
    put_str(&l, ",\"msg\":");
    put_json_string(&l, msg, strlen(msg));
    emit(&l);
}

void host_log_request(const char *request_id, const char *method, size_t method_len,
                      const char *path, size_t path_len, int status, double duration_ms,
                      const char *user_id)
{
    line_t l = {.len = 0};
    char num[64];
    put_time(&l);
    put_str(&l, ",\"level\":\"info\",\"msg\":\"request\",\"request_id\":");
    put_json_string(&l, request_id, strlen(request_id));
    put_str(&l, ",\"method\":");
    put_json_string(&l, method, method_len);
    put_str(&l, ",\"path\":");
    put_json_string(&l, path, path_len);
    snprintf(num, sizeof(num), ",\"status\":%d,\"duration_ms\":%.3f", status, duration_ms);
    put_str(&l, num);
    put_str(&l, ",\"user_id\":");
    if (user_id != NULL)
        put_json_string(&l, user_id, strlen(user_id));
    else
        put_str(&l, "null");
    emit(&l);
}

static int l_log(lua_State *L)
{
    static const char *levels[] = {"debug", "info", "warn", "error", NULL};
    int level = luaL_checkoption(L, 1, NULL, levels);
    size_t mlen;
    const char *msg = luaL_checklstring(L, 2, &mlen);
    line_t l = {.len = 0};
    put_time(&l);
    put_str(&l, ",\"level\":\"");
    put_str(&l, levels[level]);
    put_str(&l, "\",\"msg\":");
    put_json_string(&l, msg, mlen);
    if (lua_istable(L, 3)) {
        lua_pushnil(L);
        while (lua_next(L, 3) != 0) {
            if (lua_type(L, -2) == LUA_TSTRING) {
                size_t klen;
                const char *k = lua_tolstring(L, -2, &klen);
                if (strcmp(k, "time") != 0 && strcmp(k, "level") != 0 && strcmp(k, "msg") != 0) {
                    put(&l, ",", 1);
                    put_json_string(&l, k, klen);
                    put(&l, ":", 1);
                    int t = lua_type(L, -1);
                    if (t == LUA_TNUMBER || t == LUA_TBOOLEAN) {
                        char num[64];
                        if (t == LUA_TBOOLEAN)
                            snprintf(num, sizeof(num), "%s",
                                     lua_toboolean(L, -1) ? "true" : "false");
                        else if (lua_isinteger(L, -1))
                            snprintf(num, sizeof(num), "%lld", (long long)lua_tointeger(L, -1));
                        else
                            snprintf(num, sizeof(num), "%.17g", lua_tonumber(L, -1));
                        put_str(&l, num);
                    } else {
                        size_t vlen;
                        const char *v = luaL_tolstring(L, -1, &vlen); /* pushes */
                        put_json_string(&l, v, vlen);
                        lua_pop(L, 1);
                    }
                }
            }
            lua_pop(L, 1);
        }
    }
    emit(&l);
    return 0;
}

int host_open_log(lua_State *L)
{
    lua_pushcfunction(L, l_log);
    return 1;
}
