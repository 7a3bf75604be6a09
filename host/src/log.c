#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>

#include "host/log.h"

#define MAX_SECRETS 32 /* one bit each in secret_first[] */
#define LINE_MAX_BYTES 16384

static int log_fd = 2;
/* How many bytes of batched access-log lines one write(2) may carry: a pipe or a
 * terminal keeps a write whole only up to PIPE_BUF, a regular file opened with
 * O_APPEND keeps any write whole (lines of different threads never interleave). */
static size_t batch_cap = 4096;
#define BATCH_FILE_BYTES 65536

/*
 * Registered secrets. The rule: secrets are registered at start-up (main.c's
 * prepare_runtime), before host_server_start creates any worker thread, and the
 * table is append-only. host_redact runs on every log line of every thread and
 * takes no lock. What makes that safe even if a registration ever happened later:
 *   - registrations are serialised by secrets_lock (the only user of the lock);
 *   - a new entry (secrets[i], secret_lens[i], its bit in secret_first[]) is fully
 *     written before nsecrets is raised with a release store;
 *   - readers load nsecrets once with an acquire load and only look at entries
 *     below it (bits above it in secret_first[] are masked off).
 * A line being redacted while a secret is registered may miss that secret, as it
 * could with a lock, so register secrets before anything that might log them.
 */
static const char *secrets[MAX_SECRETS];
static size_t secret_lens[MAX_SECRETS];
static atomic_int nsecrets;
/* secret_first[c]: bit i set when secret i starts with byte c. */
static _Atomic uint32_t secret_first[256];
static pthread_mutex_t secrets_lock = PTHREAD_MUTEX_INITIALIZER;

/* Bytes a credential pattern (credential_at) can start with. */
static const unsigned char cred_first[256] = {
    ['e'] = 1, ['g'] = 1, ['s'] = 1, ['x'] = 1, ['b'] = 1, ['B'] = 1,
};

/* Token characters: ASCII alphanumerics and - _ . + / = (isalnum in the "C" locale,
 * which the host never changes). */
static const unsigned char token_char[256] = {
    ['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1, ['-'] = 1, ['_'] = 1,
    ['.'] = 1,         ['+'] = 1,         ['/'] = 1,         ['='] = 1,
};

int host_log_open(const char *path)
{
    if (path == NULL)
        return 0;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    log_fd = fd;
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
        batch_cap = BATCH_FILE_BYTES;
    return 0;
}

void host_log_register_secret(const char *value)
{
    if (value == NULL || strlen(value) < 8)
        return;
    pthread_mutex_lock(&secrets_lock);
    int n = atomic_load_explicit(&nsecrets, memory_order_relaxed);
    char *copy = n < MAX_SECRETS ? strdup(value) : NULL;
    if (copy != NULL) {
        secrets[n] = copy;
        secret_lens[n] = strlen(copy);
        atomic_fetch_or_explicit(&secret_first[(unsigned char)copy[0]], (uint32_t)1 << n,
                                 memory_order_relaxed);
        atomic_store_explicit(&nsecrets, n + 1, memory_order_release); /* publishes the entry */
    }
    pthread_mutex_unlock(&secrets_lock);
}

/* Extends a token from p + n over token characters; returns its length. */
static size_t token_end(const char *p, const char *end, size_t n)
{
    while (p + n < end && token_char[(unsigned char)p[n]])
        ++n;
    return n;
}

/* Length of a credential-shaped token starting at p, or 0. Patterns: "eyJ", "ghp_",
 * "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "sk-", "xoxb-" followed by at least 12
 * more token characters, and "Bearer " (any case) followed by at least one. At most one
 * pattern can match at a given position (they differ in their first bytes). */
static size_t credential_at(const char *p, const char *end)
{
    size_t avail = (size_t)(end - p), plen = 0;
    switch (p[0]) {
    case 'e':
        if (avail >= 3 && p[1] == 'y' && p[2] == 'J')
            plen = 3;
        break;
    case 'g':
        if (avail >= 4 && p[1] == 'h' && p[3] == '_' &&
            (p[2] == 'p' || p[2] == 'o' || p[2] == 'u' || p[2] == 's' || p[2] == 'r'))
            plen = 4;
        else if (avail >= 11 && memcmp(p, "github_pat_", 11) == 0)
            plen = 11;
        break;
    case 's':
        if (avail >= 3 && p[1] == 'k' && p[2] == '-')
            plen = 3;
        break;
    case 'x':
        if (avail >= 5 && memcmp(p, "xoxb-", 5) == 0)
            plen = 5;
        break;
    case 'b':
    case 'B': {
        /* "Bearer <token>": ASCII case-insensitive, as strncasecmp in the "C" locale. */
        static const char bearer[] = "bearer ";
        if (avail <= 7)
            return 0;
        for (size_t i = 0; i < 7; ++i) {
            unsigned char c = (unsigned char)p[i];
            if (c >= 'A' && c <= 'Z')
                c = (unsigned char)(c + ('a' - 'A'));
            if (c != (unsigned char)bearer[i])
                return 0;
        }
        size_t n = token_end(p, end, 7);
        return n > 7 ? n : 0;
    }
    default:
        break;
    }
    if (plen == 0)
        return 0;
    size_t n = token_end(p, end, plen);
    return n >= plen + 12 ? n : 0;
}

/*
 * Copies runs of bytes that cannot start anything redactable with memcpy. Only a byte
 * that starts a registered secret, or a credential pattern at a token boundary, takes
 * the slow path; the result is the same as testing every position.
 */
size_t host_redact(const char *in, size_t len, char *out, size_t cap)
{
    static const char mark[] = "[redacted]";
    const char *p = in, *end = in + len;
    size_t o = 0;
    if (cap == 0)
        return 0;
    int n = atomic_load_explicit(&nsecrets, memory_order_acquire);
    uint32_t live = n >= 32 ? UINT32_MAX : ((uint32_t)1 << n) - 1;
    while (p < end && o + 1 < cap) {
        /* The run of bytes up to the next one that may start something. */
        const char *q = p;
        while (q < end && !cred_first[(unsigned char)*q] &&
               (atomic_load_explicit(&secret_first[(unsigned char)*q], memory_order_relaxed) &
                live) == 0)
            ++q;
        if (q != p) {
            size_t k = (size_t)(q - p);
            if (k > cap - 1 - o)
                k = cap - 1 - o;
            memcpy(out + o, p, k);
            o += k;
            p += k;
            continue; /* re-checks the room left and the end */
        }
        unsigned char c = (unsigned char)*p;
        size_t skip = 0;
        /* Registered secrets first, in registration order. */
        uint32_t m = atomic_load_explicit(&secret_first[c], memory_order_relaxed) & live;
        while (m != 0 && skip == 0) {
            int i = __builtin_ctz(m);
            m &= m - 1;
            if ((size_t)(end - p) >= secret_lens[i] && memcmp(p, secrets[i], secret_lens[i]) == 0)
                skip = secret_lens[i];
        }
        /* Credentials only at token boundaries, so "task-1234" is never taken for "sk-...". */
        if (skip == 0 && cred_first[c] &&
            (p == in || !token_char[(unsigned char)p[-1]] || p[-1] == '='))
            skip = credential_at(p, end);
        if (skip != 0) {
            for (size_t i = 0; i < sizeof(mark) - 1 && o + 1 < cap; ++i)
                out[o++] = mark[i];
            p += skip;
        } else {
            out[o++] = *p++;
        }
    }
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

/* Bytes put_json_string must escape: '"', '\\', control characters and DEL. */
static const unsigned char json_escape[256] = {
    [0x00 ... 0x1f] = 1,
    ['"'] = 1,
    ['\\'] = 1,
    [0x7f] = 1,
};

/* JSON string with control characters escaped, so a log line is always one line. */
static void put_json_string(line_t *l, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const char *run = s, *end = s + n;
    put(l, "\"", 1);
    for (const char *p = s; p < end; ++p) {
        unsigned char c = (unsigned char)*p;
        if (!json_escape[c])
            continue;
        char esc[6] = {'\\', (char)c};
        size_t esclen = 2;
        if (c != '"' && c != '\\') { /* \u00XX, lower-case hex */
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 0xf];
            esclen = 6;
        }
        put(l, run, (size_t)(p - run));
        put(l, esc, esclen);
        run = p + 1;
    }
    put(l, run, (size_t)(end - run));
    put(l, "\"", 1);
}

/* "{"time":"2026-11-27T09:30:12.345Z"". The date and time of day are formatted once
 * per second per thread. */
static void put_time(line_t *l)
{
    static __thread time_t cached_sec = (time_t)-1;
    static __thread char cached[48]; /* {"time":"YYYY-MM-DDTHH:MM:SS */
    static __thread size_t cached_len;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    if (tv.tv_sec != cached_sec) {
        struct tm tm;
        gmtime_r(&tv.tv_sec, &tm);
        memcpy(cached, "{\"time\":\"", 9);
        cached_len = 9 + strftime(cached + 9, sizeof(cached) - 9, "%Y-%m-%dT%H:%M:%S", &tm);
        cached_sec = tv.tv_sec;
    }
    unsigned ms = (unsigned)(tv.tv_usec / 1000);
    char frac[7] = {
        '.', (char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10), 'Z', '"'};
    put(l, cached, cached_len);
    put(l, frac, 6);
}

static void write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t rc = write(log_fd, p, n);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            return; /* nowhere to report a failing log sink */
        p += rc;
        n -= (size_t)rc;
    }
}

/*
 * Access-log batching: an event-loop thread that calls host_log_batch_start() keeps
 * its request lines in a buffer and writes them with one write(2) per loop
 * iteration (host_log_flush after h2o_evloop_run), instead of one per request. A
 * line thus reaches the sink a few microseconds after its response has been
 * written to the socket, never later than the end of the loop iteration that
 * produced it. Other lines (host_log, host.log: warnings, errors) are written at
 * once, so a crash never loses the message that explains it.
 */
static __thread struct {
    char *buf;
    size_t len, cap;
} batch;

void host_log_batch_start(void)
{
    if (batch.buf != NULL)
        return;
    batch.cap = batch_cap < LINE_MAX_BYTES + 64 ? LINE_MAX_BYTES + 64 : batch_cap;
    batch.buf = malloc(batch.cap);
    batch.len = 0;
}

void host_log_flush(void)
{
    if (batch.len == 0)
        return;
    write_all(batch.buf, batch.len);
    batch.len = 0;
}

/* Finishes the line, redacts it into `out` (room for LINE_MAX_BYTES + 64) and
 * returns the length, newline included. `redacted`: its client-supplied parts were
 * redacted one by one already (an access-log line), so it is copied as it is. */
static size_t finish_line(line_t *l, char *out, int redacted)
{
    put(l, "}", 1);
    size_t n;
    if (redacted) {
        n = l->len < LINE_MAX_BYTES + 61 ? l->len : LINE_MAX_BYTES + 61;
        memcpy(out, l->buf, n);
    } else {
        n = host_redact(l->buf, l->len, out, LINE_MAX_BYTES + 62);
    }
    out[n++] = '\n';
    return n;
}

/* This thread's scratch buffer (LINE_MAX_BYTES + 64 bytes; threads write lines
 * concurrently): a client field being redacted while its line is built, then the
 * finished line on its way out. The two uses never overlap. */
static char *scratch(void)
{
    static __thread char *buf;
    if (buf == NULL)
        buf = malloc(LINE_MAX_BYTES + 64);
    return buf;
}

static void emit(line_t *l)
{
    char *out = scratch();
    write_all(out, finish_line(l, out, 0));
}

/* A request line: into this thread's batch when it has one, else written now. */
static void emit_batched(line_t *l)
{
    if (batch.buf == NULL) {
        char *out = scratch();
        write_all(out, finish_line(l, out, 1));
        return;
    }
    /* A pipe keeps only PIPE_BUF bytes whole: never let one write exceed batch_cap
     * (a single line longer than that is written alone, as it always was). */
    if (batch.len > 0 && batch.cap - batch.len < LINE_MAX_BYTES + 64)
        host_log_flush();
    size_t n = finish_line(l, batch.buf + batch.len, 1);
    if (batch.len > 0 && batch.len + n > batch_cap) {
        /* The new line would push this write past what the sink keeps whole: write
         * the earlier lines, then move the new one to the front. */
        write_all(batch.buf, batch.len);
        memmove(batch.buf, batch.buf + batch.len, n);
        batch.len = 0;
    }
    batch.len += n;
}

void host_log(const char *level, const char *fmt, ...)
{
    line_t l; /* not zero-filled: only buf[0, len) is ever read */
    l.len = 0;
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

/*
 * ",\"status\":%d,\"duration_ms\":%.3f" without printf in the common case. printf rounds
 * the exact value of the double to 3 decimals; when d * 1000 is within 0.25 of an
 * integer k (and below 2^40, where the product is off by far less than 0.25), that
 * rounding is k, with no tie, so printing k / 1000 is the same text.
 */
static size_t format_status_duration(char *out, size_t cap, int status, double d)
{
    double x = d * 1000.0;
    uint64_t k = 0;
    /* NaN fails !(d < 1e9); a huge value is cut to the buffer, as it always was. */
    if (status < 0 || status > 999 || signbit(d) || !(d < 1e9) ||
        fabs(x - (double)(k = (uint64_t)(x + 0.5))) > 0.25) {
        snprintf(out, cap, ",\"status\":%d,\"duration_ms\":%.3f", status, d);
        return strlen(out);
    }
    char tmp[48], *p = tmp + sizeof(tmp);
    for (int i = 0; i < 3; ++i, k /= 10)
        *--p = (char)('0' + k % 10);
    *--p = '.';
    do {
        *--p = (char)('0' + k % 10);
        k /= 10;
    } while (k != 0);
    static const char mid[] = ",\"duration_ms\":";
    p -= sizeof(mid) - 1;
    memcpy(p, mid, sizeof(mid) - 1);
    do {
        *--p = (char)('0' + status % 10);
        status /= 10;
    } while (status != 0);
    static const char head[] = ",\"status\":";
    p -= sizeof(head) - 1;
    memcpy(p, head, sizeof(head) - 1);
    size_t n = (size_t)(tmp + sizeof(tmp) - p);
    memcpy(out, p, n);
    out[n] = '\0';
    return n;
}

/*
 * A client-supplied field of an access-log line (method, path, user id), redacted
 * on its own before it is escaped: the rest of the line is the host's own text (time,
 * hex request id, keys, numbers), which cannot hold a secret, so the line needs no
 * second pass over it. The whole value is scanned even when the line will cut it, so
 * a secret across the cut still becomes (a cut) "[redacted]".
 */
static void put_client_string(line_t *l, const char *s, size_t n)
{
    char *tmp = scratch();
    put_json_string(l, tmp, host_redact(s, n, tmp, LINE_MAX_BYTES + 1));
}

void host_log_request(const char *request_id, const char *method, size_t method_len,
                      const char *path, size_t path_len, int status, double duration_ms,
                      const char *user_id)
{
    line_t l; /* not zero-filled: only buf[0, len) is ever read */
    l.len = 0;
    char num[64];
    put_time(&l);
    put_str(&l, ",\"level\":\"info\",\"msg\":\"request\",\"request_id\":");
    put_json_string(&l, request_id, strlen(request_id));
    put_str(&l, ",\"method\":");
    put_client_string(&l, method, method_len);
    put_str(&l, ",\"path\":");
    put_client_string(&l, path, path_len);
    put(&l, num, format_status_duration(num, sizeof(num), status, duration_ms));
    put_str(&l, ",\"user_id\":");
    if (user_id != NULL)
        put_client_string(&l, user_id, strlen(user_id));
    else
        put_str(&l, "null");
    emit_batched(&l);
}

static int l_log(lua_State *L)
{
    static const char *levels[] = {"debug", "info", "warn", "error", NULL};
    int level = luaL_checkoption(L, 1, NULL, levels);
    size_t mlen;
    const char *msg = luaL_checklstring(L, 2, &mlen);
    line_t l; /* not zero-filled: only buf[0, len) is ever read */
    l.len = 0;
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
