/* Unit tests for host/src/log.c: the redactor every log line passes through, the
 * access-log line format and the per-loop-iteration batching of request lines. */
#include <ctype.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "host/log.h"
#include "tap.h"

#define XORSHIFT_SEED 0x9e3779b97f4a7c15ULL
#include "xorshift.h"

static const char *redact(const char *in)
{
    static char out[4096];
    host_redact(in, strlen(in), out, sizeof(out));
    return out;
}

/* ---- reference: the straightforward redactor host_redact must match byte for byte ----
 * (the implementation before the fast path: every position tested, in this order). */
static const char *ref_secrets[32];
static size_t ref_nsecrets;

static void register_secret(const char *s)
{
    host_log_register_secret(s);
    if (strlen(s) >= 8)
        ref_secrets[ref_nsecrets++] = s;
}

static int ref_is_token_char(int c)
{
    return isalnum(c) || c == '-' || c == '_' || c == '.' || c == '+' || c == '/' || c == '=';
}

static size_t ref_credential_at(const char *p, const char *end)
{
    static const char *prefixes[] = {"eyJ",  "ghp_",        "gho_", "ghu_",  "ghs_",
                                     "ghr_", "github_pat_", "sk-",  "xoxb-", NULL};
    for (int i = 0; prefixes[i] != NULL; ++i) {
        size_t plen = strlen(prefixes[i]);
        if ((size_t)(end - p) < plen || memcmp(p, prefixes[i], plen) != 0)
            continue;
        size_t n = plen;
        while (p + n < end && ref_is_token_char((unsigned char)p[n]))
            ++n;
        if (n >= plen + 12)
            return n;
    }
    if (end - p > 7 && strncasecmp(p, "bearer ", 7) == 0) {
        size_t n = 7;
        while (p + n < end && ref_is_token_char((unsigned char)p[n]))
            ++n;
        if (n > 7)
            return n;
    }
    return 0;
}

static size_t ref_redact(const char *in, size_t len, char *out, size_t cap)
{
    static const char mark[] = "[redacted]";
    const char *p = in, *end = in + len;
    size_t o = 0;
    if (cap == 0)
        return 0;
    while (p < end && o + 1 < cap) {
        size_t skip = 0;
        int boundary = p == in || !ref_is_token_char((unsigned char)p[-1]) || p[-1] == '=';
        for (size_t i = 0; i < ref_nsecrets && skip == 0; ++i) {
            size_t sl = strlen(ref_secrets[i]);
            if ((size_t)(end - p) >= sl && memcmp(p, ref_secrets[i], sl) == 0)
                skip = sl;
        }
        if (skip == 0 && boundary)
            skip = ref_credential_at(p, end);
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

/* Same output (bytes, length, terminator) as the reference for `in` and capacity `cap`. */
static int same_as_ref(const char *in, size_t len, size_t cap)
{
    static char a[8192], b[8192];
    memset(a, 'A', sizeof(a));
    memset(b, 'A', sizeof(b));
    size_t na = host_redact(in, len, a, cap), nb = ref_redact(in, len, b, cap);
    return na == nb && memcmp(a, b, cap < sizeof(a) ? cap : sizeof(a)) == 0;
}

/* Random lines built from fragments of secrets and credential patterns, token and
 * boundary characters, NUL and non-ASCII bytes; random output capacities. */
static void fuzz_against_ref(void)
{
    static const char *frags[] = {
        "canary-secret-value-0123456789",
        "canary-secret-",
        "overlap-secret-AAAA",
        "-longer-tail",
        "zz-longer-secret-BBBB",
        "-tail",
        "sekret-starts-like-sk",
        "eyJ",
        "ghp_",
        "gho_",
        "ghu_",
        "ghs_",
        "ghr_",
        "gh_",
        "github_pat_",
        "sk-",
        "xoxb-",
        "Bearer ",
        "bearer ",
        "BeArEr ",
        "Bearer",
        "abcdefghijkl",
        "0123456789",
        "=",
        "-",
        "_",
        " ",
        "\"",
        ":",
        "task",
        "Authorization: ",
        "\xc3\xa9",
        "\x7f",
        "x",
        "{\"q\":\"",
    };
    const size_t nfrags = sizeof(frags) / sizeof(frags[0]);
    int failures = 0;
    char line[1024];
    for (int iter = 0; iter < 50000 && failures == 0; ++iter) {
        size_t len = 0, parts = 1 + rnd(12);
        for (size_t k = 0; k < parts; ++k) {
            uint32_t pick = rnd((uint32_t)nfrags + 3);
            if (pick >= nfrags) { /* a raw byte, NUL included */
                line[len++] = (char)rnd(256);
                continue;
            }
            size_t fl = strlen(frags[pick]);
            if (rnd(4) == 0) /* sometimes only a prefix of it */
                fl = rnd((uint32_t)fl + 1);
            memcpy(line + len, frags[pick], fl);
            len += fl;
        }
        size_t cap = rnd(3) == 0 ? 1 + rnd(40) : 4096;
        if (!same_as_ref(line, len, cap)) {
            ++failures;
            printf("# mismatch for %zu bytes, cap %zu: %.*s\n", len, cap, (int)len, line);
        }
    }
    ok(failures == 0, "50000 random lines redact exactly like the reference implementation");
}

/* ---- the access-log line: fields formatted without printf must match printf ---------- */

static int log_to_file(FILE **f, char *path, size_t cap)
{
    snprintf(path, cap, "/tmp/test_log_%d.log", (int)getpid());
    unlink(path);
    if (host_log_open(path) != 0)
        return -1;
    *f = fopen(path, "r");
    return *f != NULL ? 0 : -1;
}

/* Reads the next line the logger wrote. */
static int next_line(FILE *f, char *buf, size_t cap)
{
    clearerr(f);
    return fgets(buf, (int)cap, f) != NULL ? 0 : -1;
}

/* The old JSON string escaper: snprintf for control characters. */
static void ref_json_string(char *out, size_t cap, const char *s, size_t n)
{
    size_t o = 0;
    out[o++] = '"';
    for (size_t i = 0; i < n && o + 8 < cap; ++i) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o++] = '"';
    out[o] = '\0';
}

static void test_request_line(void)
{
    char path[64], line[20000], want[20000], num[128], esc[4096];
    FILE *f;
    if (log_to_file(&f, path, sizeof(path)) != 0) {
        ok(0, "cannot open a temporary log file");
        return;
    }
    static const double durations[] = {
        0.0,     0.001, 0.0005,  0.0015,      0.0625,    1.0625,       12.3455,    0.1234,
        999.999, 1e6,   1e9,     1e9 - 0.001, 123456.78, 5e-324,       1e300,      -0.0,
        -1.5,    0.25,  1.0 / 3, 2.0 / 3,     0.9995,    0.0004999999, 4503599.62, 17.0,
    };
    const size_t nd = sizeof(durations) / sizeof(durations[0]);
    int bad = 0;
    uint64_t r = 12345;
    for (size_t i = 0; i < nd + 3000 && bad == 0; ++i) {
        double d;
        int status = (int)(i % 7) * 100 + 99;
        if (i < nd) {
            d = durations[i];
        } else if (i % 3 == 0) { /* what the host passes: whole microseconds / 1000 */
            r = r * 6364136223846793005ULL + 1442695040888963407ULL;
            d = (double)(r >> 40) / 1000.0;
        } else {
            r = r * 6364136223846793005ULL + 1442695040888963407ULL;
            d = (double)(r >> 11) / (double)(1ULL << 53) * (i % 2 ? 100.0 : 1e7);
        }
        if (i == nd)
            status = -5;
        if (i == nd + 1)
            status = 1000;
        host_log_request("0123456789abcdef", "GET", 3, "/p", 2, status, d, NULL);
        if (next_line(f, line, sizeof(line)) != 0) {
            bad++;
            break;
        }
        /* The old code: snprintf into a 64-byte buffer (cut there), then the user id. */
        snprintf(num, 64, ",\"status\":%d,\"duration_ms\":%.3f", status, d);
        strcat(num, ",\"user_id\":null}\n");
        char *at = strstr(line, ",\"status\":");
        if (at == NULL || strcmp(at, num) != 0) {
            bad++;
            printf("# duration %.17g status %d: got %s# want %s", d, status, at ? at : line, num);
        }
    }
    ok(bad == 0, "status and duration_ms are formatted exactly as printf's %%d and %%.3f");

    /* Escaping and the other fields, against the old snprintf-based escaper. */
    char raw[300];
    for (int c = 0; c < 256; ++c)
        raw[c] = (char)(c == 0 ? 'z' : c); /* a NUL would end the method in a C string */
    memcpy(raw + 256, "\"quoted\" \\ back\\slash \x7f end", 28);
    ref_json_string(esc, sizeof(esc), raw, 284);
    host_log_request("0123456789abcdef", "POST", 4, raw, 284, 201, 1.5, "user-1");
    int got = next_line(f, line, sizeof(line)) == 0;
    snprintf(want, sizeof(want),
             ",\"level\":\"info\",\"msg\":\"request\",\"request_id\":\"0123456789abcdef\","
             "\"method\":\"POST\",\"path\":%s,\"status\":201,\"duration_ms\":1.500,"
             "\"user_id\":\"user-1\"}\n",
             esc);
    char *after_time = got ? strstr(line, ",\"level\"") : NULL;
    ok(after_time != NULL && strcmp(after_time, want) == 0,
       "request line fields and JSON escaping (every byte value) unchanged");
    /* {"time":"2026-11-27T09:30:12.345Z", */
    int shape = got && strlen(line) > 35 && strncmp(line, "{\"time\":\"", 9) == 0;
    for (int i = 9; shape && i < 33; ++i) {
        char c = line[i];
        shape = (i == 13 || i == 16)   ? c == '-'
                : i == 19              ? c == 'T'
                : (i == 22 || i == 25) ? c == ':'
                : i == 28              ? c == '.'
                : i == 32              ? c == 'Z'
                                       : (c >= '0' && c <= '9');
    }
    ok(shape && line[33] == '"' && line[34] == ',', "time is YYYY-MM-DDTHH:MM:SS.mmmZ (UTC)");

    /* A line longer than the buffer is cut, still redacted, still one line. */
    static char big[40000];
    memset(big, 'a', sizeof(big));
    memcpy(big + 16370, "canary-secret-value-0123456789", 30);
    host_log_request("0123456789abcdef", "GET", 3, big, sizeof(big), 200, 1.0, NULL);
    got = next_line(f, line, sizeof(line)) == 0;
    ok(got && strstr(line, "canary") == NULL && line[strlen(line) - 1] == '\n' &&
           strlen(line) < 16384 + 64,
       "an over-long line is truncated, redacted and newline-terminated");

    /* Each client-supplied field is redacted on its own. */
    host_log_request("0123456789abcdef", "canary-secret-value-0123456789", 30,
                     "/a/canary-secret-value-0123456789/b", 35, 404, 1.0,
                     "user canary-secret-value-0123456789");
    got = next_line(f, line, sizeof(line)) == 0;
    ok(got && strstr(line, "canary") == NULL && strstr(line, "\"method\":\"[redacted]\"") != NULL &&
           strstr(line, "\"user_id\":\"user [redacted]\"") != NULL &&
           strstr(line, "\"path\":\"/a/[redacted]/b\"") != NULL,
       "secrets in method, path and user id are redacted");
    host_log_request("0123456789abcdef", "GET", 3, "/\x01ghp_abcdefghijklmnopqrstuvwxyz0123", 37,
                     200, 1.0, NULL);
    got = next_line(f, line, sizeof(line)) == 0;
    ok(got && strstr(line, "ghp_") == NULL && strstr(line, "\\u0001[redacted]") != NULL,
       "a credential after a control character is redacted before escaping");
    fclose(f);
    unlink(path);
    host_log_open("/dev/null");
}

/* ---- batching: request lines wait for host_log_flush, other lines do not ---------------- */

static size_t count_lines(const char *path, int *in_order, int *whole)
{
    FILE *f = fopen(path, "r");
    static char line[20000];
    size_t n = 0;
    long prev = -1;
    *in_order = 1;
    *whole = 1;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        size_t len = strlen(line);
        if (len < 2 || line[0] != '{' || line[len - 1] != '\n' || line[len - 2] != '}')
            *whole = 0;
        const char *id = strstr(line, "\"request_id\":\"");
        if (id != NULL) {
            long v = strtol(id + 14, NULL, 10);
            if (v <= prev)
                *in_order = 0;
            prev = v;
        }
        ++n;
    }
    if (f != NULL)
        fclose(f);
    return n;
}

static void *batching_thread(void *arg)
{
    const char *path = arg;
    int in_order, whole;
    char id[17];
    host_log_batch_start();
    for (int i = 0; i < 3; ++i) {
        snprintf(id, sizeof(id), "%016d", i);
        host_log_request(id, "GET", 3, "/ping", 5, 200, 0.25, NULL);
    }
    ok(count_lines(path, &in_order, &whole) == 0, "batched request lines wait for the flush");
    host_log("warn", "not batched");
    ok(count_lines(path, &in_order, &whole) == 1, "other lines are written at once");
    host_log_flush();
    ok(count_lines(path, &in_order, &whole) == 4 && in_order && whole,
       "the flush writes the batched lines, whole and in order");
    host_log_flush();
    ok(count_lines(path, &in_order, &whole) == 4, "a second flush writes nothing");

    /* More than a batch holds (long paths): written as the batch fills, none lost. */
    static char longpath[3000];
    memset(longpath, 'p', sizeof(longpath));
    longpath[0] = '/';
    for (int i = 3; i < 1003; ++i) {
        snprintf(id, sizeof(id), "%016d", i);
        host_log_request(id, "GET", 3, longpath, sizeof(longpath), 200, 1.0, NULL);
    }
    size_t before_flush = count_lines(path, &in_order, &whole);
    ok(before_flush > 4 && before_flush < 1004, "a full batch is written before the flush (%zu)",
       before_flush);
    host_log_flush();
    ok(count_lines(path, &in_order, &whole) == 1004 && in_order && whole,
       "1000 long request lines: all written, whole, in order");
    return NULL;
}

static void test_batching(void)
{
    char path[64];
    snprintf(path, sizeof(path), "/tmp/test_log_batch_%d.log", (int)getpid());
    unlink(path);
    if (host_log_open(path) != 0) {
        ok(0, "cannot open a temporary log file");
        return;
    }
    /* On its own thread: batching is per thread and stays on once started. */
    pthread_t t;
    pthread_create(&t, NULL, batching_thread, path);
    pthread_join(t, NULL);
    int in_order, whole;
    host_log_request("0000000000009999", "GET", 3, "/x", 2, 200, 1.0, NULL);
    ok(count_lines(path, &in_order, &whole) == 1005,
       "a thread that did not start batching writes request lines at once");
    unlink(path);
    host_log_open("/dev/null");
}

int main(void)
{
    register_secret("canary-secret-value-0123456789");
    register_secret("short"); /* under 8 bytes: ignored, would redact common words */
    /* Overlapping secrets: the first registered that matches wins, as before. */
    register_secret("overlap-secret-AAAA");
    register_secret("overlap-secret-AAAA-longer-tail");
    register_secret("zz-longer-secret-BBBB-tail");
    register_secret("zz-longer-secret-BBBB");
    register_secret("sekret-starts-like-sk"); /* first byte also starts a credential pattern */

    ok(strcmp(redact("plain text"), "plain text") == 0, "plain text passes unchanged");
    ok(strstr(redact("x canary-secret-value-0123456789 y"), "canary") == NULL,
       "registered secret removed");
    ok(strcmp(redact("a canary-secret-value-0123456789 b"), "a [redacted] b") == 0,
       "secret replaced by marker");
    ok(strcmp(redact("short words"), "short words") == 0,
       "secrets under 8 bytes are not registered");
    ok(strstr(redact("Authorization: Bearer abc.def.ghi"), "abc.def") == NULL,
       "bearer token removed");
    ok(strstr(redact("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"), "eyJ") == NULL,
       "JWT removed");
    ok(strstr(redact("ghp_abcdefghijklmnopqrstuvwxyz0123"), "ghp_") == NULL,
       "GitHub token removed");
    ok(strstr(redact("key=sk-ant-api03-abcdefghijklmnop"), "sk-ant") == NULL,
       "Anthropic key removed");
    ok(strcmp(redact("task-1234567890123456789"), "task-1234567890123456789") == 0,
       "sk- inside a word is not a key");
    ok(strcmp(redact("ghp_short"), "ghp_short") == 0, "a bare prefix without a token body stays");
    ok(strstr(redact("{\"q\":\"canary-secret-value-0123456789\"}"), "canary") == NULL,
       "secret inside JSON removed");

    char small[8];
    size_t n = host_redact("0123456789abcdef", 16, small, sizeof(small));
    ok(n == 7 && small[7] == '\0', "output is truncated and NUL-terminated");

    /* Edge cases of the fast path. */
    ok(strcmp(redact("end canary-secret-value-0123456789"), "end [redacted]") == 0,
       "a secret at the very end of a line");
    ok(strcmp(redact("canary-secret-value-0123456789"), "[redacted]") == 0,
       "a line that is only a secret");
    ok(strcmp(redact("canary-secret-value-012345678"), "canary-secret-value-012345678") == 0,
       "a secret cut short by the end of the line stays");
    ok(strcmp(redact("x overlap-secret-AAAA-longer-tail"), "x [redacted]-longer-tail") == 0,
       "overlapping secrets: the shorter one registered first wins");
    ok(strcmp(redact("zz-longer-secret-BBBB-tail!"), "[redacted]!") == 0,
       "overlapping secrets: the longer one registered first wins");
    ok(strcmp(redact("zz-longer-secret-BBBB!"), "[redacted]!") == 0,
       "overlapping secrets: the shorter one still matches alone");
    ok(strcmp(redact("a=sekret-starts-like-sk b"), "a=[redacted] b") == 0,
       "a secret starting with a credential byte");
    ok(strcmp(redact("tok ghp_abcdefghijklmnopqrstuvwxyz0123"), "tok [redacted]") == 0,
       "a credential at the very end of a line");
    ok(strcmp(redact("ghp_abcdefghijkl"), "[redacted]") == 0,
       "a credential of exactly prefix + 12 characters");
    ok(strcmp(redact("ghp_abcdefghijk"), "ghp_abcdefghijk") == 0,
       "one character short of a credential stays");
    ok(strcmp(redact("x BEARER abc y"), "x [redacted] y") == 0, "bearer in any case");
    ok(strcmp(redact("Authorization: Bearer "), "Authorization: Bearer ") == 0,
       "Bearer without a token at the end of a line stays");
    ok(strcmp(redact("Authorization: Bearer"), "Authorization: Bearer") == 0,
       "Bearer at the very end of a line stays");
    ok(strcmp(redact("x=eyJhbGciOiJIUzI1NiJ9"), "x=[redacted]") == 0,
       "a credential right after '=' is at a boundary");
    ok(strcmp(redact("keyeyJhbGciOiJIUzI1NiJ9"), "keyeyJhbGciOiJIUzI1NiJ9") == 0,
       "a credential pattern inside a word stays");
    {
        char tiny[5];
        size_t m = host_redact("canary-secret-value-0123456789", 30, tiny, sizeof(tiny));
        ok(m == 4 && strcmp(tiny, "[red") == 0, "the marker itself is truncated at the capacity");
        m = host_redact("abc", 3, tiny, 1);
        ok(m == 0 && tiny[0] == '\0', "capacity 1 gives an empty string");
    }
    fuzz_against_ref();
    test_request_line();
    test_batching();
    return tap_done();
}
