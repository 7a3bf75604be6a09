#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/time.h>
#include <unistd.h>

#include <lauxlib.h>

#include "host/config.h"
#include "host/core.h"
#include "host/log.h"
#include "host/sched.h"

double host_started_at;

static int l_now(lua_State *L)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    lua_pushnumber(L, (double)tv.tv_sec + (double)(tv.tv_usec / 1000) / 1000.0);
    return 1;
}

static int l_monotonic_ms(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)host_now_ms());
    return 1;
}

typedef struct {
    host_timer_t timer;
    host_co_t *co;
} sleep_op_t;

static void on_sleep_done(host_timer_t *timer)
{
    sleep_op_t *op = timer->data;
    host_co_t *co = op->co;
    free(op);
    host_co_clear_op(co);
    host_co_resume(co, 0);
}

static void sleep_cancel(void *_op)
{
    sleep_op_t *op = _op;
    host_timer_stop(op->co->worker->timers, &op->timer);
    free(op);
}

static int l_sleep(lua_State *L)
{
    lua_Number s = luaL_checknumber(L, 1);
    luaL_argcheck(L, s >= 0 && s <= 86400, 1, "sleep duration out of range");
    host_co_t *co = host_co_current(L);
    if (co == NULL)
        return luaL_error(L, "host.sleep can only be used while handling a request or task");
    sleep_op_t *op = malloc(sizeof(*op));
    if (op == NULL)
        return luaL_error(L, "out of memory");
    op->co = co;
    host_timer_init(&op->timer, on_sleep_done, op);
    host_timer_start(co->worker->timers, &op->timer, (uint64_t)(s * 1000));
    return host_co_yield_op(L, op, sleep_cancel);
}

/* --- host.spawn: background coroutines (task runners, pollers) --- */

typedef struct {
    host_timer_t timer;
    host_co_t *co;
    int nargs;
} spawn_start_t;

static void on_background_done(host_co_t *co, int status, int nresults)
{
    (void)nresults;
    if (status != LUA_OK) {
        const char *msg = lua_tostring(co->L, -1);
        host_log("error", "background coroutine failed: %s",
                 msg != NULL ? msg : "(non-string error)");
    }
}

static void on_spawn_start(host_timer_t *timer)
{
    spawn_start_t *s = timer->data;
    host_co_t *co = s->co;
    int nargs = s->nargs;
    free(s);
    host_co_resume(co, nargs);
}

static int l_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    host_worker_t *w = host_current_worker;
    host_co_t *self = host_co_current(L);
    host_gen_t *gen = self != NULL ? self->gen : (w != NULL ? w->gen : NULL);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    lua_State *main_state = lua_tothread(L, -1);
    lua_pop(L, 1);
    /* The new coroutine must live in the caller's own VM (e.g. not a generation
     * that is still loading while the worker runs the previous one). */
    if (w == NULL || gen == NULL || main_state != gen->L)
        return luaL_error(L, "host.spawn can only be used on a worker thread's current VM");
    spawn_start_t *s = malloc(sizeof(*s));
    host_co_t *co = s != NULL ? host_co_new_on(w, gen, on_background_done, NULL, 0, 1) : NULL;
    if (co == NULL) {
        free(s);
        return luaL_error(L, "out of memory");
    }
    int nargs = lua_gettop(L) - 1;
    lua_xmove(L, co->L, nargs + 1); /* function and arguments, same global state */
    s->co = co;
    s->nargs = nargs;
    /* Start on the next loop iteration, never nested inside the caller's resume. */
    host_timer_init(&s->timer, on_spawn_start, s);
    host_timer_start(w->timers, &s->timer, 0);
    return 0;
}

/* host.is_current_generation(): false once a reload has replaced this code, so a
 * long-running loop can hand over to the new generation's copy of itself. */
static int l_is_current_generation(lua_State *L)
{
    host_worker_t *w = host_current_worker;
    host_co_t *self = host_co_current(L);
    lua_pushboolean(L, w != NULL && self != NULL && self->gen == w->gen);
    return 1;
}

/* Names whose values the C host keeps away from scripts. */
static int is_secret_name(const char *name)
{
    static const char *exact[] = {"JWT_SECRET", "SUPABASE_JWT_SECRET", "DATABASE_URL", NULL};
    static const char *suffixes[] = {"_KEY", "_TOKEN", "_SECRET", "_PASSWORD", NULL};
    for (int i = 0; exact[i] != NULL; ++i)
        if (strcmp(name, exact[i]) == 0)
            return 1;
    size_t n = strlen(name);
    for (int i = 0; suffixes[i] != NULL; ++i) {
        size_t sl = strlen(suffixes[i]);
        if (n >= sl && strcasecmp(name + n - sl, suffixes[i]) == 0)
            return 1;
    }
    return 0;
}

static int l_env(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    if (is_secret_name(name))
        return luaL_error(L, "host.env: '%s' is a secret and is not readable from scripts", name);
    const char *v = getenv(name);
    if (v == NULL)
        lua_pushnil(L);
    else
        lua_pushstring(L, v);
    return 1;
}

/* host.has_env(name): whether a (possibly secret) variable is set, without its value. */
static int l_has_env(lua_State *L)
{
    const char *v = getenv(luaL_checkstring(L, 1));
    lua_pushboolean(L, v != NULL && *v != '\0');
    return 1;
}

static void fill_random(unsigned char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(buf + got, n - got, 0);
        if (r > 0)
            got += (size_t)r;
    }
}

static int l_uuid(lua_State *L)
{
    unsigned char b[16];
    char s[37];
    fill_random(b, sizeof(b));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    snprintf(s, sizeof(s), "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
    lua_pushstring(L, s);
    return 1;
}

static int l_random_hex(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n > 0 && n <= 256, 1, "between 1 and 256 bytes");
    unsigned char b[256];
    char hex[513];
    fill_random(b, (size_t)n);
    for (lua_Integer i = 0; i < n; ++i)
        snprintf(hex + 2 * i, 3, "%02x", b[i]);
    lua_pushlstring(L, hex, (size_t)(2 * n));
    return 1;
}

/* --- host.shared: a small process-wide counter table (fixed-window rate limits). --- */

#define SHARED_BUCKETS 4096
#define SHARED_MAX_ENTRIES 100000

typedef struct shared_entry {
    struct shared_entry *next;
    double expires_at;
    lua_Integer value;
    char key[];
} shared_entry_t;

static shared_entry_t *shared_table[SHARED_BUCKETS];
static size_t shared_count;
static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;

static double now_s(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static uint32_t hash_key(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; ++i)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

/* Drops expired entries of one bucket; called under the lock. */
static void sweep_bucket(shared_entry_t **slot, double now)
{
    while (*slot != NULL) {
        if ((*slot)->expires_at <= now) {
            shared_entry_t *dead = *slot;
            *slot = dead->next;
            free(dead);
            --shared_count;
        } else {
            slot = &(*slot)->next;
        }
    }
}

static int l_shared_incr(lua_State *L)
{
    size_t klen;
    const char *key = luaL_checklstring(L, 1, &klen);
    lua_Integer by = luaL_optinteger(L, 2, 1);
    lua_Number ttl = luaL_optnumber(L, 3, 60);
    luaL_argcheck(L, klen <= 256, 1, "key too long");
    luaL_argcheck(L, ttl > 0, 3, "ttl must be positive");
    double now = now_s();
    uint32_t b = hash_key(key, klen) % SHARED_BUCKETS;
    lua_Integer value;
    double remaining;
    pthread_mutex_lock(&shared_lock);
    sweep_bucket(&shared_table[b], now);
    shared_entry_t *e = shared_table[b];
    while (e != NULL && !(strlen(e->key) == klen && memcmp(e->key, key, klen) == 0))
        e = e->next;
    if (e == NULL && shared_count < SHARED_MAX_ENTRIES &&
        (e = malloc(sizeof(*e) + klen + 1)) != NULL) {
        memcpy(e->key, key, klen);
        e->key[klen] = '\0';
        e->value = 0;
        e->expires_at = now + ttl;
        e->next = shared_table[b];
        shared_table[b] = e;
        ++shared_count;
    }
    if (e != NULL) {
        e->value += by;
        value = e->value;
        remaining = e->expires_at - now;
    } else {
        /* Table full: fail open rather than lock every client out. */
        value = by;
        remaining = ttl;
    }
    pthread_mutex_unlock(&shared_lock);
    lua_pushinteger(L, value);
    lua_pushnumber(L, remaining);
    return 2;
}

static int l_shared_get(lua_State *L)
{
    size_t klen;
    const char *key = luaL_checklstring(L, 1, &klen);
    double now = now_s();
    uint32_t b = hash_key(key, klen) % SHARED_BUCKETS;
    int found = 0;
    lua_Integer value = 0;
    pthread_mutex_lock(&shared_lock);
    sweep_bucket(&shared_table[b], now);
    for (shared_entry_t *e = shared_table[b]; e != NULL; e = e->next)
        if (strlen(e->key) == klen && memcmp(e->key, key, klen) == 0) {
            found = 1;
            value = e->value;
            break;
        }
    pthread_mutex_unlock(&shared_lock);
    if (found)
        lua_pushinteger(L, value);
    else
        lua_pushnil(L);
    return 1;
}

/* host.find_executable(name) -> path | nil: PATH lookup, for health reporting. */
static int l_find_executable(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    const char *path = getenv("PATH");
    luaL_argcheck(L, strchr(name, '/') == NULL, 1, "a bare program name");
    char buf[4096];
    while (path != NULL && *path != '\0') {
        const char *colon = strchr(path, ':');
        size_t n = colon != NULL ? (size_t)(colon - path) : strlen(path);
        snprintf(buf, sizeof(buf), "%.*s/%s", (int)n, path, name);
        if (n > 0 && access(buf, X_OK) == 0) {
            lua_pushstring(L, buf);
            return 1;
        }
        path = colon != NULL ? colon + 1 : NULL;
    }
    lua_pushnil(L);
    return 1;
}

/* host.base64_encode(s) / host.base64_decode(s) -> s | nil: standard alphabet with
 * padding (what Connect's protojson uses for bytes fields). */
static int l_base64_encode(lua_State *L)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, 4 * ((n + 2) / 3));
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0) |
                     (i + 2 < n ? s[i + 2] : 0);
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? tbl[v & 63] : '=';
    }
    luaL_pushresultsize(&b, o);
    return 1;
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

static int l_base64_decode(lua_State *L)
{
    size_t n;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    while (n > 0 && s[n - 1] == '=')
        --n;
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, n * 3 / 4 + 3);
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; ++i) {
        int v = b64_value(s[i]);
        if (v < 0) {
            lua_pushnil(L);
            return 1;
        }
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    luaL_pushresultsize(&b, o);
    return 1;
}

/* host.traceback(msg): the message plus a stack traceback, for error logs only. */
static int l_traceback(lua_State *L)
{
    luaL_traceback(L, L, luaL_optstring(L, 1, NULL), 1);
    return 1;
}

/* --- host.vault: short-lived secrets handed from one worker's VM to another's ---
 * A GitHub token arrives with POST /api/start-task on any worker but is used by the
 * task engine on worker 0. It must never be stored in the database, so it waits
 * here, in process memory only, until the engine takes it (or it expires). */

typedef struct vault_entry {
    struct vault_entry *next;
    double expires_at;
    char *key, *value;
    size_t value_len;
} vault_entry_t;

static vault_entry_t *vault;
static size_t vault_count;
static pthread_mutex_t vault_lock = PTHREAD_MUTEX_INITIALIZER;
#define VAULT_MAX_ENTRIES 10000

static void vault_free(vault_entry_t *e)
{
    explicit_bzero(e->value, e->value_len);
    free(e->key);
    free(e->value);
    free(e);
}

/* Unlinks expired entries and the entry for `key` (if any); returns the latter. */
static vault_entry_t *vault_unlink(const char *key, double now)
{
    vault_entry_t *found = NULL;
    for (vault_entry_t **slot = &vault; *slot != NULL;) {
        vault_entry_t *e = *slot;
        if (e->expires_at <= now || (found == NULL && key != NULL && strcmp(e->key, key) == 0)) {
            *slot = e->next;
            --vault_count;
            if (e->expires_at > now && key != NULL && strcmp(e->key, key) == 0)
                found = e;
            else
                vault_free(e);
        } else {
            slot = &e->next;
        }
    }
    return found;
}

static int l_vault_put(lua_State *L)
{
    const char *key = luaL_checkstring(L, 1);
    size_t vlen;
    const char *value = luaL_checklstring(L, 2, &vlen);
    lua_Number ttl = luaL_checknumber(L, 3);
    luaL_argcheck(L, ttl > 0 && ttl <= 7 * 86400, 3, "ttl out of range");
    vault_entry_t *e = calloc(1, sizeof(*e));
    if (e == NULL || (e->key = strdup(key)) == NULL || (e->value = malloc(vlen + 1)) == NULL) {
        if (e != NULL)
            free(e->key);
        free(e);
        return luaL_error(L, "out of memory");
    }
    memcpy(e->value, value, vlen);
    e->value[vlen] = '\0';
    e->value_len = vlen;
    double now = now_s();
    e->expires_at = now + ttl;
    pthread_mutex_lock(&vault_lock);
    vault_entry_t *old = vault_unlink(key, now);
    int full = vault_count >= VAULT_MAX_ENTRIES;
    if (!full) {
        e->next = vault;
        vault = e;
        ++vault_count;
    }
    pthread_mutex_unlock(&vault_lock);
    if (old != NULL)
        vault_free(old);
    if (full) {
        vault_free(e);
        lua_pushnil(L);
        lua_pushliteral(L, "vault full");
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* host.vault.get(key) -> value | nil: leaves the entry in place. */
static int l_vault_get(lua_State *L)
{
    const char *key = luaL_checkstring(L, 1);
    pthread_mutex_lock(&vault_lock);
    vault_entry_t *e = vault_unlink(key, now_s());
    if (e != NULL) { /* put it back: vault_unlink removed it */
        e->next = vault;
        vault = e;
        ++vault_count;
        lua_pushlstring(L, e->value, e->value_len);
    } else {
        lua_pushnil(L);
    }
    pthread_mutex_unlock(&vault_lock);
    return 1;
}

/* host.vault.take(key) -> value | nil: removes the entry. */
static int l_vault_take(lua_State *L)
{
    const char *key = luaL_checkstring(L, 1);
    pthread_mutex_lock(&vault_lock);
    vault_entry_t *e = vault_unlink(key, now_s());
    pthread_mutex_unlock(&vault_lock);
    if (e == NULL) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushlstring(L, e->value, e->value_len);
    vault_free(e);
    return 1;
}

int host_open_core(lua_State *L)
{
    static const luaL_Reg funcs[] = {{"now", l_now},
                                     {"monotonic_ms", l_monotonic_ms},
                                     {"sleep", l_sleep},
                                     {"env", l_env},
                                     {"has_env", l_has_env},
                                     {"uuid", l_uuid},
                                     {"random_hex", l_random_hex},
                                     {"traceback", l_traceback},
                                     {"find_executable", l_find_executable},
                                     {"base64_encode", l_base64_encode},
                                     {"base64_decode", l_base64_decode},
                                     {"spawn", l_spawn},
                                     {"is_current_generation", l_is_current_generation},
                                     {NULL, NULL}};
    static const luaL_Reg shared[] = {{"incr", l_shared_incr}, {"get", l_shared_get}, {NULL, NULL}};
    luaL_newlib(L, funcs);
    luaL_newlib(L, shared);
    lua_setfield(L, -2, "shared");
    static const luaL_Reg vault_funcs[] = {
        {"put", l_vault_put}, {"take", l_vault_take}, {"get", l_vault_get}, {NULL, NULL}};
    luaL_newlib(L, vault_funcs);
    lua_setfield(L, -2, "vault");
    lua_createtable(L, 0, 6);
    lua_pushstring(L, AICODE_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushboolean(L, host_config.dev);
    lua_setfield(L, -2, "dev");
    lua_pushinteger(L, host_config.workers);
    lua_setfield(L, -2, "workers");
    lua_pushstring(L, host_config.data_dir != NULL ? host_config.data_dir : "./data");
    lua_setfield(L, -2, "data_dir");
    lua_pushnumber(L, host_started_at);
    lua_setfield(L, -2, "started_at");
    char cwd[4096];
    lua_pushstring(L, getcwd(cwd, sizeof(cwd)) != NULL ? cwd : ".");
    lua_setfield(L, -2, "cwd");
    lua_pushstring(L, host_config.host != NULL ? host_config.host : "127.0.0.1");
    lua_setfield(L, -2, "listen_host");
    lua_pushinteger(L, host_config.port);
    lua_setfield(L, -2, "listen_port");
    lua_pushboolean(L, host_config.tls_cert != NULL);
    lua_setfield(L, -2, "tls");
    lua_setfield(L, -2, "info");
    return 1;
}
