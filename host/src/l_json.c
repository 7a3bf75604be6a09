/*
 * host.json: decode with jansson, encode straight from Lua values.
 *
 * Decoding leans on jansson for the grammar (and its duplicate-key, UTF-8 and integer-range
 * checks) and then converts the tree. Encoding runs on every HTTP response, so it skips any
 * intermediate tree and writes text into a per-state scratch buffer.
 *
 * Memory safety across longjmp: every malloc'd resource is owned by a Lua userdata with a
 * __gc (the jansson tree by a per-call box, the encoder's buffers by the registry-anchored
 * scratch), so a Lua memory error raised anywhere frees instead of leaking. The encoder's
 * walk itself calls only API functions that allocate no Lua object (lua_next, lua_rawget,
 * lua_checkstack, ...), so no garbage collection step, and hence no finalizer that might
 * re-enter the encoder and reuse the scratch, can run while it is busy.
 */
#include "host/json.h"
#include "host/common.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Registry name of the metatable of the box that owns a jansson tree during conversion. */
#define TREE_MT "host.json.tree"

/* Scratch buffers larger than this are released after an encode, so one huge response does
 * not pin its memory for the life of the state. */
#define SCRATCH_KEEP_BYTES ((size_t)256 * 1024)
#define SCRATCH_KEEP_KEYS ((size_t)4096)

/* Longest piece of jansson's error text (which quotes the input) copied into messages. */
#define ERR_TEXT_MAX 80

enum table_kind { KIND_NONE, KIND_ARRAY, KIND_OBJECT };

/* Its address is the registry key of the encoder scratch. */
static const char scratch_regkey;

/* An object key collected for sorting; `idx` is the stack slot holding the key string. */
struct key_ent {
    const char *s;
    size_t len;
    int idx;
};

/* Key-order memo, one per nesting depth: the key strings of the last object sorted at that
 * depth, in lua_next order, and the sorted order as indices into that list. Arrays of rows
 * (every row a table with the same keys, built the same way, so traversed in the same
 * order) then sort their keys once. Key pointers are compared by identity, which is only
 * meaningful within one encode: the walk allocates nothing, so no collection runs, and
 * every memoized string belongs to a table reachable from the value being encoded. The
 * memo is therefore cleared when an encode starts. */
#define MEMO_DEPTHS 8
#define MEMO_MAX_KEYS 32

struct key_memo {
    size_t n; /* 0: empty */
    const char *keys[MEMO_MAX_KEYS];
    unsigned char order[MEMO_MAX_KEYS];
};

/* Reused by every encode on a state: output text, and a stack of keys being sorted (nested
 * objects push their keys above their parent's). */
struct scratch {
    char *buf;
    size_t len, cap;
    struct key_ent *keys;
    size_t nkeys, keycap;
    struct key_memo memo[MEMO_DEPTHS];
};

struct enc {
    lua_State *L;
    struct scratch *s;
    int array_mt, object_mt; /* absolute stack slots of the marker metatables */
    char *err;
    size_t errlen;
    /* 2: an object's values stay on the stack next to its keys (no lookup per key); 1:
     * keys only, half the stack. The encode starts with 2 and, should the stack run
     * out, starts over with 1, so the result is always what keys-only gives. */
    int stride;
    int stack_short; /* the stack ran out while stride was 2 */
};

struct dec {
    lua_State *L;
    int array_mt, object_mt;
    char *err;
    size_t errlen;
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void host_json_marker_mt(lua_State *L, const char *name)
{
    luaL_newmetatable(L, name);
}

void host_json_set_array_mt(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    host_json_marker_mt(L, HOST_JSON_ARRAY_MT);
    lua_setmetatable(L, idx);
}

void host_json_set_object_mt(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    host_json_marker_mt(L, HOST_JSON_OBJECT_MT);
    lua_setmetatable(L, idx);
}

/* ---- decode ------------------------------------------------------------------------------ */

static int tree_gc(lua_State *L)
{
    json_t **box = lua_touserdata(L, 1);

    if (*box != NULL) {
        json_decref(*box);
        *box = NULL;
    }
    return 0;
}

static void push_tree_mt(lua_State *L)
{
    if (luaL_newmetatable(L, TREE_MT)) {
        lua_pushcfunction(L, tree_gc);
        lua_setfield(L, -2, "__gc");
    }
}

/* Turns jansson's error into a message a client may see: its text quotes the input, so it
 * is cut to ERR_TEXT_MAX characters and reduced to printable ASCII (the message may itself
 * be sent back JSON-encoded, which requires valid UTF-8). */
static void format_decode_error(const json_error_t *je, char *err, size_t errlen)
{
    char text[ERR_TEXT_MAX + 4];
    size_t i;

    switch (json_error_code(je)) {
    case json_error_stack_overflow:
        set_err(err, errlen, "JSON nesting too deep (max %d)", HOST_JSON_MAX_DEPTH);
        return;
    case json_error_out_of_memory:
        set_err(err, errlen, "out of memory");
        return;
    case json_error_null_character:
        /* jansson's own text names a flag of its API, meaningless to a client. */
        set_err(err, errlen, "invalid JSON at line %d column %d: \\u0000 is not allowed in strings",
                je->line, je->column);
        return;
    default:
        break;
    }
    for (i = 0; i < ERR_TEXT_MAX && je->text[i] != '\0'; i++) {
        unsigned char c = (unsigned char)je->text[i];
        text[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (i == ERR_TEXT_MAX && je->text[i] != '\0') {
        memcpy(text + i, "...", 3);
        i += 3;
    }
    text[i] = '\0';
    set_err(err, errlen, "invalid JSON at line %d column %d: %s", je->line, je->column, text);
}

static int dec_value(struct dec *d, json_t *j, int depth)
{
    lua_State *L = d->L;

    if (!lua_checkstack(L, 3)) {
        set_err(d->err, d->errlen, "out of memory");
        return -1;
    }
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        const char *key;
        json_t *v;

        if (depth >= HOST_JSON_MAX_DEPTH)
            goto too_deep;
        lua_createtable(L, 0, (int)json_object_size(j));
        json_object_foreach(j, key, v) {
            /* JSON_ALLOW_NUL is off, so a key never contains NUL and strlen is exact. */
            lua_pushstring(L, key);
            if (dec_value(d, v, depth + 1) < 0)
                return -1;
            lua_rawset(L, -3);
        }
        lua_pushvalue(L, d->object_mt);
        lua_setmetatable(L, -2);
        break;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *v;

        if (depth >= HOST_JSON_MAX_DEPTH)
            goto too_deep;
        lua_createtable(L, (int)json_array_size(j), 0);
        json_array_foreach(j, i, v) {
            if (dec_value(d, v, depth + 1) < 0)
                return -1;
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        lua_pushvalue(L, d->array_mt);
        lua_setmetatable(L, -2);
        break;
    }
    case JSON_STRING:
        lua_pushlstring(L, json_string_value(j), json_string_length(j));
        break;
    case JSON_INTEGER:
        lua_pushinteger(L, (lua_Integer)json_integer_value(j));
        break;
    case JSON_REAL:
        lua_pushnumber(L, (lua_Number)json_real_value(j));
        break;
    case JSON_TRUE:
        lua_pushboolean(L, 1);
        break;
    case JSON_FALSE:
        lua_pushboolean(L, 0);
        break;
    case JSON_NULL:
        host_push_null(L);
        break;
    }
    return 0;

too_deep:
    set_err(d->err, d->errlen, "JSON nesting too deep (max %d)", HOST_JSON_MAX_DEPTH);
    return -1;
}

int host_json_push_decoded(lua_State *L, const char *s, size_t len, char *err, size_t errlen)
{
    struct dec d = {L, 0, 0, err, errlen};
    json_error_t je;
    json_t **box;
    int top = lua_gettop(L), rc;

    if (len > HOST_JSON_MAX_INPUT) {
        set_err(err, errlen, "JSON input too large (max %zu bytes)", HOST_JSON_MAX_INPUT);
        return -1;
    }
    if (!lua_checkstack(L, 4)) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    host_json_marker_mt(L, HOST_JSON_ARRAY_MT);
    host_json_marker_mt(L, HOST_JSON_OBJECT_MT);
    d.array_mt = top + 1;
    d.object_mt = top + 2;
    /* The box exists before jansson allocates anything, so a memory error raised while the
     * tree is converted leaves it to __gc rather than leaking it. */
    box = lua_newuserdatauv(L, sizeof(*box), 0);
    *box = NULL;
    push_tree_mt(L);
    lua_setmetatable(L, -2);

    *box = json_loadb(s, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (*box == NULL) {
        format_decode_error(&je, err, errlen);
        lua_settop(L, top);
        return -1;
    }
    rc = dec_value(&d, *box, 0);
    json_decref(*box);
    *box = NULL;
    if (rc < 0) {
        lua_settop(L, top);
        return -1;
    }
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
    return 0;
}

/* ---- encode ------------------------------------------------------------------------------ */

static int scratch_gc(lua_State *L)
{
    struct scratch *s = lua_touserdata(L, 1);

    free(s->buf);
    free(s->keys);
    memset(s, 0, sizeof(*s));
    return 0;
}

static struct scratch *get_scratch(lua_State *L)
{
    struct scratch *s;

    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &scratch_regkey) == LUA_TUSERDATA) {
        s = lua_touserdata(L, -1);
        lua_pop(L, 1);
        return s;
    }
    lua_pop(L, 1);
    s = lua_newuserdatauv(L, sizeof(*s), 0);
    memset(s, 0, sizeof(*s));
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, scratch_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    /* Anchored by the registry, so the pointer stays valid with nothing left on the stack. */
    lua_rawsetp(L, LUA_REGISTRYINDEX, &scratch_regkey);
    return s;
}

static void scratch_trim(struct scratch *s)
{
    if (s->cap > SCRATCH_KEEP_BYTES) {
        free(s->buf);
        s->buf = NULL;
        s->cap = 0;
    }
    if (s->keycap > SCRATCH_KEEP_KEYS) {
        free(s->keys);
        s->keys = NULL;
        s->keycap = 0;
    }
    s->len = 0;
    s->nkeys = 0;
}

static int enc_fail(struct enc *e, const char *fmt, const char *arg)
{
    set_err(e->err, e->errlen, fmt, arg);
    return -1;
}

static int buf_grow(struct enc *e, size_t need);

/* Makes room for `need` more bytes; the check is inlined, the growth is not. */
static inline int buf_reserve(struct enc *e, size_t need)
{
    if (__builtin_expect(need <= e->s->cap - e->s->len, 1))
        return 0;
    return buf_grow(e, need);
}

static __attribute__((noinline)) int buf_grow(struct enc *e, size_t need)
{
    struct scratch *s = e->s;
    size_t cap;
    char *p;

    cap = s->cap != 0 ? s->cap : 1024;
    while (cap - s->len < need) {
        if (cap > SIZE_MAX / 2)
            return enc_fail(e, "out of memory", NULL);
        cap *= 2;
    }
    if ((p = realloc(s->buf, cap)) == NULL)
        return enc_fail(e, "out of memory", NULL);
    s->buf = p;
    s->cap = cap;
    return 0;
}

static int buf_add(struct enc *e, const char *p, size_t n)
{
    if (buf_reserve(e, n) < 0)
        return -1;
    memcpy(e->s->buf + e->s->len, p, n);
    e->s->len += n;
    return 0;
}

static int buf_addc(struct enc *e, char c)
{
    if (buf_reserve(e, 1) < 0)
        return -1;
    e->s->buf[e->s->len++] = c;
    return 0;
}

static int enc_integer(struct enc *e, lua_Integer v)
{
    char tmp[24], *p = tmp + sizeof(tmp);
    /* Negate in unsigned arithmetic so LLONG_MIN is exact. */
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;

    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        *--p = '-';
    return buf_add(e, p, (size_t)(tmp + sizeof(tmp) - p));
}

/* Shortest of %.15g/%.16g/%.17g that reads back as the same double (%.17g always does).
 * Like Lua itself, this assumes the "C" LC_NUMERIC locale, which the host never changes. */
static int enc_float(struct enc *e, double d)
{
    char tmp[40];
    int n = 0, prec;

    if (!isfinite(d))
        return enc_fail(e, "cannot encode NaN or Infinity", NULL);
    if (fabs(d) >= 1e-3 && fabs(d) < 1e12) {
        /* Fast path for values with at most 3 decimals (timestamps in seconds, money,
         * durations): d is the double nearest to k / 1000 for an integer k with at most 15
         * digits. Then %.15g prints exactly that decimal, trailing zeros removed (d is off
         * from k / 1000 by under a fifth of a unit in its 15th digit, and k / 1000 lies on
         * the 15-digit grid because |d| < 1e12), strtod reads it back as d, and fixed
         * notation applies (1e-3 <= |d| < 1e15). So this prints what the loop below would. */
        long long k = llround(d * 1000.0);
        if ((double)k / 1000.0 == d) {
            unsigned long long u = k < 0 ? 0ULL - (unsigned long long)k : (unsigned long long)k;
            unsigned long long ip = u / 1000;
            unsigned fp = (unsigned)(u % 1000);
            char *p = tmp + sizeof(tmp);

            if (fp == 0) {
                *--p = '0'; /* "3" would decode as an integer: "3.0" */
            } else {
                int digits = 3;
                while (fp % 10 == 0) {
                    fp /= 10;
                    digits--;
                }
                while (digits-- > 0) {
                    *--p = (char)('0' + fp % 10);
                    fp /= 10;
                }
            }
            *--p = '.';
            do {
                *--p = (char)('0' + ip % 10);
                ip /= 10;
            } while (ip != 0);
            if (k < 0)
                *--p = '-';
            return buf_add(e, p, (size_t)(tmp + sizeof(tmp) - p));
        }
    }
    for (prec = 15; prec <= 17; prec++) {
        n = snprintf(tmp, sizeof(tmp), "%.*g", prec, d);
        if (prec == 17 || strtod(tmp, NULL) == d)
            break;
    }
    /* "3" would decode as an integer; keep floats floats across a round trip. */
    if (strpbrk(tmp, ".eni") == NULL) {
        tmp[n++] = '.';
        tmp[n++] = '0';
    }
    return buf_add(e, tmp, (size_t)n);
}

/* Length of the well-formed UTF-8 sequence (RFC 3629: no overlongs, no surrogates, nothing
 * above U+10FFFF) starting at the non-ASCII byte p[0], or 0 when it is malformed. */
static size_t utf8_seq_len(const unsigned char *p, const unsigned char *end)
{
    size_t avail = (size_t)(end - p), n, i;
    unsigned char lo = 0x80, hi = 0xbf;

    if (p[0] >= 0xc2 && p[0] <= 0xdf)
        n = 2;
    else if (p[0] >= 0xe0 && p[0] <= 0xef)
        n = 3;
    else if (p[0] >= 0xf0 && p[0] <= 0xf4)
        n = 4;
    else
        return 0;
    if (avail < n)
        return 0;
    /* Only the second byte has a narrowed range, depending on the lead byte. */
    if (p[0] == 0xe0)
        lo = 0xa0;
    else if (p[0] == 0xed)
        hi = 0x9f;
    else if (p[0] == 0xf0)
        lo = 0x90;
    else if (p[0] == 0xf4)
        hi = 0x8f;
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    return n;
}

/* enc_string's byte classes: 0 = copied as is, 1 = escaped (control characters, '"',
 * '\\'), 2 = non-ASCII (UTF-8 is validated, U+2028/U+2029 are escaped). */
static const unsigned char str_class[256] = {
    [0x00 ... 0x1f] = 1,
    ['"'] = 1,
    ['\\'] = 1,
    [0x80 ... 0xff] = 2,
};

/* True when none of the 8 bytes of w is a control character, '"', '\\' or >= 0x80, i.e.
 * all are class 0 (classic SWAR tests; they have no false negatives, and a false
 * positive would only send the bytes through the exact per-byte path). */
static inline int plain8(uint64_t w)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\');
    uint64_t special = ((w - ones * 0x20) & ~w) /* a byte < 0x20 (or >= 0x80, checked too) */
                       | ((q - ones) & ~q)      /* a '"' */
                       | ((b - ones) & ~b)      /* a '\\' */
                       | w;                     /* a byte >= 0x80 */
    return (special & highs) == 0;
}

/* Length of the run of class-0 bytes at p (up to end). */
static inline size_t plain_run(const unsigned char *p, const unsigned char *end)
{
    const unsigned char *q = p;
    uint64_t w;

    while (end - q >= 8) {
        memcpy(&w, q, 8);
        if (!plain8(w))
            break;
        q += 8;
    }
    while (q < end && str_class[*q] == 0)
        q++;
    return (size_t)(q - p);
}

static int enc_string(struct enc *e, const char *str, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)str, *end = p + len, *run;
    char esc[6];
    size_t esclen, n;

    if (buf_reserve(e, len + 2) < 0)
        return -1;
    e->s->buf[e->s->len++] = '"';
    /* Copy runs of bytes that need nothing in one memcpy; stop only at bytes that need an
     * escape or a UTF-8 check. */
    run = p;
    while (p < end) {
        unsigned char c;

        p += plain_run(p, end);
        if (p == end)
            break;
        c = *p;
        if (c >= 0x80) {
            if ((n = utf8_seq_len(p, end)) == 0)
                return enc_fail(e, "invalid UTF-8 in string", NULL);
            /* U+2028/U+2029 are valid in JSON but end a line in JavaScript source. */
            if (n != 3 || c != 0xe2 || p[1] != 0x80 || (p[2] != 0xa8 && p[2] != 0xa9)) {
                p += n;
                continue;
            }
            memcpy(esc, "\\u202", 5);
            esc[5] = p[2] == 0xa8 ? '8' : '9';
            esclen = 6;
        } else {
            esc[0] = '\\';
            esclen = 2;
            switch (c) {
            case '"':
                esc[1] = '"';
                break;
            case '\\':
                esc[1] = '\\';
                break;
            case '\n':
                esc[1] = 'n';
                break;
            case '\t':
                esc[1] = 't';
                break;
            case '\r':
                esc[1] = 'r';
                break;
            case '\b':
                esc[1] = 'b';
                break;
            case '\f':
                esc[1] = 'f';
                break;
            default:
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 0xf];
                esclen = 6;
                break;
            }
        }
        if (buf_add(e, (const char *)run, (size_t)(p - run)) < 0 || buf_add(e, esc, esclen) < 0)
            return -1;
        p += c >= 0x80 ? 3 : 1;
        run = p;
    }
    if (buf_add(e, (const char *)run, (size_t)(p - run)) < 0)
        return -1;
    return buf_addc(e, '"');
}

/* Bytewise order; a key that is a prefix of another sorts first. */
static inline int key_less(const struct key_ent *x, const struct key_ent *y)
{
    int c = memcmp(x->s, y->s, x->len < y->len ? x->len : y->len);

    return c != 0 ? c < 0 : x->len < y->len;
}

static int key_cmp(const void *a, const void *b)
{
    const struct key_ent *x = a, *y = b;
    int c = memcmp(x->s, y->s, x->len < y->len ? x->len : y->len);

    if (c != 0)
        return c;
    return (x->len > y->len) - (x->len < y->len);
}

/* Object keys are distinct strings, so any correct sort gives the same order. Small
 * objects (the usual API row) use an insertion sort: no call through a comparator and
 * none of qsort's set-up; large ones use qsort. */
#define KEY_INSERTION_SORT_MAX 24

static void sort_keys(struct key_ent *k, size_t n)
{
    if (n > KEY_INSERTION_SORT_MAX) {
        qsort(k, n, sizeof(*k), key_cmp);
        return;
    }
    for (size_t i = 1; i < n; i++) {
        struct key_ent cur = k[i];
        size_t j = i;

        while (j > 0 && key_less(&cur, &k[j - 1])) {
            k[j] = k[j - 1];
            j--;
        }
        k[j] = cur;
    }
}

/* Sorts the n keys of an object at `depth` whose key i sits in stack slot
 * top + 1 + stride * i, reusing the memo when the keys are the same strings in the same
 * order as last time. */
static void sort_keys_memo(struct scratch *s, struct key_ent *k, size_t n, int top, int stride,
                           int depth)
{
    struct key_memo *m = depth < MEMO_DEPTHS && n <= MEMO_MAX_KEYS ? &s->memo[depth] : NULL;
    size_t i;

    if (m == NULL) {
        sort_keys(k, n);
        return;
    }
    if (m->n == n) {
        for (i = 0; i < n && m->keys[i] == k[i].s; i++)
            ;
        if (i == n) {
            struct key_ent orig[MEMO_MAX_KEYS];

            memcpy(orig, k, n * sizeof(*k));
            for (i = 0; i < n; i++)
                k[i] = orig[m->order[i]];
            return;
        }
    }
    m->n = 0;
    for (i = 0; i < n; i++)
        m->keys[i] = k[i].s;
    sort_keys(k, n);
    for (i = 0; i < n; i++)
        m->order[i] = (unsigned char)((k[i].idx - (top + 1)) / stride);
    m->n = n;
}

static int enc_value(struct enc *e, int idx, int depth);

/* Emits t[1..n]; a nil (possible only in a table marked as array) becomes null. */
static int enc_array(struct enc *e, int t, lua_Integer n, int depth)
{
    lua_State *L = e->L;
    lua_Integer i;
    int rc;

    if (buf_addc(e, '[') < 0)
        return -1;
    for (i = 1; i <= n; i++) {
        if (i > 1 && buf_addc(e, ',') < 0)
            return -1;
        lua_rawgeti(L, t, i);
        rc = enc_value(e, lua_gettop(L), depth);
        lua_pop(L, 1);
        if (rc < 0)
            return -1;
    }
    return buf_addc(e, ']');
}

/* Emits the object whose `n` string keys sit in stack slots top+1..top+n, in bytewise key
 * order, and pops those keys. */
static int enc_object(struct enc *e, int t, int top, size_t n, int depth)
{
    lua_State *L = e->L;
    struct scratch *s = e->s;
    size_t base = s->nkeys, i;
    int rc = 0;

    if (s->keycap - base < n) {
        size_t cap = s->keycap != 0 ? s->keycap : 64;
        struct key_ent *k;

        while (cap - base < n)
            cap *= 2;
        if ((k = realloc(s->keys, cap * sizeof(*k))) == NULL) {
            lua_settop(L, top);
            return enc_fail(e, "out of memory", NULL);
        }
        s->keys = k;
        s->keycap = cap;
    }
    for (i = 0; i < n; i++) {
        struct key_ent *k = &s->keys[base + i];

        k->idx = top + 1 + e->stride * (int)i;
        k->s = lua_tolstring(L, k->idx, &k->len);
    }
    s->nkeys = base + n;
    sort_keys_memo(s, s->keys + base, n, top, e->stride, depth);

    rc = buf_addc(e, '{');
    for (i = 0; rc == 0 && i < n; i++) {
        /* A copy: nested objects may move s->keys when they grow it. */
        struct key_ent k = s->keys[base + i];

        if ((i > 0 && buf_addc(e, ',') < 0) || enc_string(e, k.s, k.len) < 0 ||
            buf_addc(e, ':') < 0) {
            rc = -1;
            break;
        }
        if (e->stride == 2) {
            rc = enc_value(e, k.idx + 1, depth); /* the value sits above its key */
            continue;
        }
        if (!lua_checkstack(L, 1)) {
            rc = enc_fail(e, "table too large to encode", NULL);
            break;
        }
        lua_pushvalue(L, k.idx);
        lua_rawget(L, t);
        rc = enc_value(e, lua_gettop(L), depth);
        lua_pop(L, 1);
    }
    if (rc == 0)
        rc = buf_addc(e, '}');
    s->nkeys = base;
    lua_settop(L, top);
    return rc;
}

static int enc_table(struct enc *e, int t, int depth)
{
    lua_State *L = e->L;
    int top = lua_gettop(L), all_str = 1, all_int = 1;
    enum table_kind kind = KIND_NONE;
    lua_Integer count = 0, maxkey = 0;

    if (depth > HOST_JSON_MAX_DEPTH)
        return enc_fail(e, "nesting too deep", NULL);
    if (!lua_checkstack(L, 4)) {
        if (e->stride == 2)
            e->stack_short = 1;
        return enc_fail(e, "table too large to encode", NULL);
    }
    /* Only the metatable's identity matters; its contents are never consulted. */
    if (lua_getmetatable(L, t)) {
        if (lua_rawequal(L, -1, e->array_mt))
            kind = KIND_ARRAY;
        else if (lua_rawequal(L, -1, e->object_mt))
            kind = KIND_OBJECT;
        lua_pop(L, 1);
    }
    if (kind == KIND_ARRAY)
        return enc_array(e, t, (lua_Integer)lua_rawlen(L, t), depth);

    /* One pass classifies the keys. String keys (and, with stride 2, their values) are kept
     * on the stack for sorting: pushing them back later with lua_pushlstring could
     * allocate, and so run a GC step. */
    lua_pushnil(L);
    for (;;) {
        if (!lua_checkstack(L, 3)) {
            lua_settop(L, top);
            if (e->stride == 2)
                e->stack_short = 1;
            return enc_fail(e, "table too large to encode", NULL);
        }
        if (!lua_next(L, t))
            break;
        count++;
        if (lua_type(L, -2) == LUA_TSTRING) {
            all_int = 0;
        } else {
            all_str = 0;
            if (lua_isinteger(L, -2) && lua_tointeger(L, -2) >= 1) {
                if (lua_tointeger(L, -2) > maxkey)
                    maxkey = lua_tointeger(L, -2);
            } else {
                all_int = 0;
            }
        }
        if (all_str && e->stride == 2) {
            lua_pushvalue(L, -2); /* keep this key and its value, iterate with the copy */
            continue;
        }
        lua_pop(L, 1);
        if (all_str) {
            lua_pushvalue(L, -1); /* keep this key, iterate with the copy */
            continue;
        }
        if (kind == KIND_OBJECT) {
            lua_settop(L, top);
            return enc_fail(e, "cannot encode object with non-string key", NULL);
        }
        if (!all_int) {
            lua_settop(L, top);
            return enc_fail(e, "cannot encode table with mixed or sparse keys", NULL);
        }
    }
    if (count == 0)
        return buf_add(e, "{}", 2);
    if (all_str)
        return enc_object(e, t, top, (size_t)count, depth);
    /* count distinct integer keys, all within 1..count, are exactly 1..count. */
    if (maxkey != count)
        return enc_fail(e, "cannot encode table with mixed or sparse keys", NULL);
    return enc_array(e, t, count, depth);
}

static int enc_value(struct enc *e, int idx, int depth)
{
    lua_State *L = e->L;
    const char *s;
    size_t len;

    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return buf_add(e, "null", 4);
    case LUA_TBOOLEAN:
        return lua_toboolean(L, idx) ? buf_add(e, "true", 4) : buf_add(e, "false", 5);
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            return enc_integer(e, lua_tointeger(L, idx));
        return enc_float(e, (double)lua_tonumber(L, idx));
    case LUA_TSTRING:
        s = lua_tolstring(L, idx, &len);
        return enc_string(e, s, len);
    case LUA_TTABLE:
        return enc_table(e, idx, depth + 1);
    case LUA_TLIGHTUSERDATA:
        if (host_is_null(L, idx))
            return buf_add(e, "null", 4);
        break;
    default:
        break;
    }
    return enc_fail(e, "cannot encode value of type %s", luaL_typename(L, idx));
}

int host_json_push_encoded(lua_State *L, int idx, char *err, size_t errlen)
{
    struct enc e = {L, NULL, 0, 0, err, errlen, 2, 0};
    int top, rc;

    idx = lua_absindex(L, idx);
    top = lua_gettop(L);
    if (!lua_checkstack(L, 4)) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    /* Everything that may allocate Lua objects happens before the walk starts. */
    host_json_marker_mt(L, HOST_JSON_ARRAY_MT);
    host_json_marker_mt(L, HOST_JSON_OBJECT_MT);
    e.array_mt = top + 1;
    e.object_mt = top + 2;
    e.s = get_scratch(L);
    e.s->len = 0;
    e.s->nkeys = 0;
    for (int i = 0; i < MEMO_DEPTHS; i++)
        e.s->memo[i].n = 0; /* key pointers from an earlier encode mean nothing now */

    e.stride = 2;
    rc = enc_value(&e, idx, 0);
    lua_settop(L, top + 2);
    if (rc < 0 && e.stack_short) { /* start over keeping keys only */
        e.stride = 1;
        e.s->len = 0;
        e.s->nkeys = 0;
        for (int i = 0; i < MEMO_DEPTHS; i++)
            e.s->memo[i].n = 0;
        rc = enc_value(&e, idx, 0);
    }
    lua_settop(L, top);
    /* lua_pushlstring copies before its GC step, so a finalizer that encodes cannot
     * clobber the text being copied. */
    if (rc == 0)
        lua_pushlstring(L, e.s->buf, e.s->len);
    scratch_trim(e.s);
    return rc;
}

int host_json_encode_value(lua_State *L, int idx, luaL_Buffer *b, char *err, size_t errlen)
{
    if (host_json_push_encoded(L, idx, err, errlen) < 0)
        return -1;
    luaL_addvalue(b);
    return 0;
}

/* ---- Lua API ----------------------------------------------------------------------------- */

static int l_json_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    char err[256];

    if (host_json_push_decoded(L, s, len, err, sizeof(err)) == 0)
        return 1;
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

static int l_json_encode(lua_State *L)
{
    char err[256];

    lua_settop(L, 1); /* json.encode() encodes nil: null */
    if (host_json_push_encoded(L, 1, err, sizeof(err)) == 0)
        return 1;
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

static int mark_table(lua_State *L, const char *mt)
{
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    } else {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_settop(L, 1);
    }
    host_json_marker_mt(L, mt);
    lua_setmetatable(L, 1);
    return 1;
}

static int l_json_array(lua_State *L)
{
    return mark_table(L, HOST_JSON_ARRAY_MT);
}

static int l_json_object(lua_State *L)
{
    return mark_table(L, HOST_JSON_OBJECT_MT);
}

static int l_json_is_array(lua_State *L)
{
    int is = 0;

    if (lua_type(L, 1) == LUA_TTABLE && lua_getmetatable(L, 1)) {
        host_json_marker_mt(L, HOST_JSON_ARRAY_MT);
        is = lua_rawequal(L, -1, -2);
    }
    lua_pushboolean(L, is);
    return 1;
}

int host_open_json(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"decode", l_json_decode}, {"encode", l_json_encode},     {"array", l_json_array},
        {"object", l_json_object}, {"is_array", l_json_is_array}, {NULL, NULL},
    };

    host_json_marker_mt(L, HOST_JSON_ARRAY_MT);
    host_json_marker_mt(L, HOST_JSON_OBJECT_MT);
    push_tree_mt(L);
    lua_pop(L, 3);
    get_scratch(L);
    luaL_newlib(L, funcs);
    host_push_null(L);
    lua_setfield(L, -2, "null");
    return 1;
}
