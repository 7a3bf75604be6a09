/*
 * host.jwt: the Lua binding and the process-global JWT configuration.
 *
 * Issuing uses libjwt 1.10.2 (a project requirement; creating a token with it is
 * safe). Verifying never does: libjwt 1.10.2 trusts the token's alg, compares MACs
 * with strcmp and checks no claims, so every verification goes through
 * jwt_verify.c with the algorithm pinned by our key.
 *
 * Global state: `g_cfg` is written by host_jwt_configure() before worker threads start
 * and is read-only afterwards, so readers take no lock. The JWKS key set can change at
 * run time (the host refreshes it from Lua), so it sits behind a rwlock; verifiers
 * hold the read lock for the duration of one signature check, which lets the writer
 * free the old set as soon as it owns the write lock.
 */
#define _POSIX_C_SOURCE 200809L

#include "host/jwt.h"

#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jwt.h>
#include <lauxlib.h>
#include <openssl/crypto.h>

#include "host/common.h"
#include "host/jwt_verify.h"

/* Longest token jwt.issue() can produce: 256-byte user_id escaped at worst 6x, base64. */
#define ISSUE_BUF_LEN 4096
/* Ten years: keeps now + ttl far inside the verifier's NumericDate range. */
#define MAX_TTL_S (10L * 366 * 24 * 3600)
/* Deeper claim values are dropped rather than recursing on attacker-shaped JSON. */
#define CLAIMS_MAX_DEPTH 16
#define CLAIMS_BOX_MT "host.jwt.claims"

struct jwt_config {
    int configured;
    unsigned char *secret; /* the server secret, for libjwt when issuing */
    size_t secret_len;
    jwtv_key *server_key;   /* the same secret, pinned to HS256, for verifying */
    jwtv_key *supabase_key; /* legacy Supabase HS256 secret, or NULL */
    long access_ttl;
    long refresh_ttl;
};

static struct jwt_config g_cfg;
static pthread_rwlock_t g_jwks_lock = PTHREAD_RWLOCK_INITIALIZER;
static jwtv_keyset *g_jwks;

static void set_err(char *err, size_t errlen, const char *msg)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s", msg);
}

static void config_free(struct jwt_config *cfg)
{
    if (cfg->secret != NULL)
        OPENSSL_clear_free(cfg->secret, cfg->secret_len);
    jwtv_key_free(cfg->server_key);
    jwtv_key_free(cfg->supabase_key);
    memset(cfg, 0, sizeof(*cfg));
}

int host_jwt_configure(const char *secret, size_t secret_len, const char *supabase_secret,
                       size_t supabase_len, long access_ttl_s, long refresh_ttl_s, char *err,
                       size_t errlen)
{
    struct jwt_config next = {0};
    int rc = -1;

    if (secret == NULL || secret_len < HOST_JWT_MIN_SECRET_LEN) {
        set_err(err, errlen, "JWT_SECRET must be at least 32 bytes");
        goto cleanup;
    }
    if (supabase_secret != NULL && supabase_len > 0 && supabase_len < HOST_JWT_MIN_SECRET_LEN) {
        set_err(err, errlen, "SUPABASE_JWT_SECRET must be at least 32 bytes");
        goto cleanup;
    }
    /* libjwt takes the key length as int. */
    if (secret_len > INT_MAX || supabase_len > INT_MAX) {
        set_err(err, errlen, "JWT secret is too long");
        goto cleanup;
    }
    if (access_ttl_s <= 0 || refresh_ttl_s <= 0 || access_ttl_s > MAX_TTL_S ||
        refresh_ttl_s > MAX_TTL_S) {
        set_err(err, errlen, "JWT token lifetimes must be between 1 second and 10 years");
        goto cleanup;
    }

    next.secret = malloc(secret_len);
    next.server_key = jwtv_key_hs256((const unsigned char *)secret, secret_len);
    if (next.secret == NULL || next.server_key == NULL) {
        set_err(err, errlen, "out of memory");
        goto cleanup;
    }
    memcpy(next.secret, secret, secret_len);
    next.secret_len = secret_len;
    if (supabase_secret != NULL && supabase_len > 0) {
        next.supabase_key = jwtv_key_hs256((const unsigned char *)supabase_secret, supabase_len);
        if (next.supabase_key == NULL) {
            set_err(err, errlen, "out of memory");
            goto cleanup;
        }
    }
    next.access_ttl = access_ttl_s;
    next.refresh_ttl = refresh_ttl_s;
    next.configured = 1;

    config_free(&g_cfg);
    g_cfg = next;
    memset(&next, 0, sizeof(next));
    rc = 0;

cleanup:
    config_free(&next);
    return rc;
}

int host_jwt_set_jwks(const char *json, size_t len, char *err, size_t errlen)
{
    jwtv_keyset *ks, *old;

    /* Parse outside the lock: verifiers keep running on the old set meanwhile. */
    ks = jwtv_keyset_from_json(json, len, err, errlen);
    if (ks == NULL)
        return -1;
    if (pthread_rwlock_wrlock(&g_jwks_lock) != 0) {
        jwtv_keyset_free(ks);
        set_err(err, errlen, "JWKS lock failed");
        return -1;
    }
    old = g_jwks;
    g_jwks = ks;
    pthread_rwlock_unlock(&g_jwks_lock);
    /* Readers hold the read lock while they use a set, so nobody can still see `old`. */
    jwtv_keyset_free(old);
    return 0;
}

void host_jwt_shutdown(void)
{
    jwtv_keyset *old = NULL;

    config_free(&g_cfg);
    if (pthread_rwlock_wrlock(&g_jwks_lock) == 0) {
        old = g_jwks;
        g_jwks = NULL;
        pthread_rwlock_unlock(&g_jwks_lock);
    }
    jwtv_keyset_free(old);
}

/*
 * Builds and signs a token into `buf`. On failure returns -1 and points `*why` at a
 * static message. Nothing here calls Lua, so the Lua binding can raise afterwards
 * with no C resource outstanding.
 */
static int issue_token(const char *user_id, size_t uid_len, const char *type, const char *scope,
                       char *buf, size_t cap, long *expires_in, const char **why)
{
    jwt_t *jwt = NULL;
    char *tok = NULL;
    size_t n;
    long ttl, now;
    int rc = -1;

    if (!g_cfg.configured) {
        *why = "host.jwt is not configured";
        goto cleanup;
    }
    if (strcmp(type, "access") == 0) {
        ttl = g_cfg.access_ttl;
    } else if (strcmp(type, "refresh") == 0) {
        ttl = g_cfg.refresh_ttl;
    } else if (strcmp(type, "stream") == 0) {
        /* For EventSource, which cannot send headers: the token travels in a URL,
         * so it is short-lived and scoped to one resource. */
        ttl = HOST_JWT_STREAM_TTL;
        if (scope == NULL || *scope == '\0') {
            *why = "stream tokens need a scope";
            goto cleanup;
        }
    } else {
        *why = "type must be 'access', 'refresh' or 'stream'";
        goto cleanup;
    }
    /* An embedded NUL would be silently truncated by libjwt's C-string API. */
    if (uid_len == 0 || uid_len > HOST_JWT_MAX_USER_ID_LEN || memchr(user_id, '\0', uid_len)) {
        *why = "user_id must be a non-empty string of at most 256 bytes";
        goto cleanup;
    }

    now = (long)time(NULL);
    *why = "failed to build token";
    if (jwt_new(&jwt) != 0 || jwt_add_grant(jwt, "user_id", user_id) != 0 ||
        jwt_add_grant(jwt, "type", type) != 0 || jwt_add_grant_int(jwt, "exp", now + ttl) != 0 ||
        jwt_add_grant_int(jwt, "iat", now) != 0 ||
        (scope != NULL && jwt_add_grant(jwt, "scope", scope) != 0) ||
        jwt_set_alg(jwt, JWT_ALG_HS256, g_cfg.secret, (int)g_cfg.secret_len) != 0)
        goto cleanup;
    tok = jwt_encode_str(jwt);
    if (tok == NULL)
        goto cleanup;
    n = strlen(tok);
    if (n >= cap)
        goto cleanup;
    memcpy(buf, tok, n + 1);
    if (expires_in != NULL)
        *expires_in = ttl;
    *why = NULL;
    rc = 0;

cleanup:
    free(tok);
    jwt_free(jwt); /* also scrubs libjwt's copy of the key */
    return rc;
}

int host_jwt_issue_c(const char *user_id, const char *type, char **out_token, long *expires_in)
{
    char buf[ISSUE_BUF_LEN];
    const char *why = NULL;
    size_t n;

    if (out_token == NULL)
        return -1;
    *out_token = NULL;
    if (user_id == NULL || type == NULL)
        return -1;
    if (issue_token(user_id, strlen(user_id), type, NULL, buf, sizeof(buf), expires_in, &why) != 0)
        return -1;
    n = strlen(buf) + 1;
    *out_token = malloc(n);
    if (*out_token == NULL)
        return -1;
    memcpy(*out_token, buf, n);
    return 0;
}

/* ---- Lua ------------------------------------------------------------------------------- */

/*
 * Verified claims live in a userdata "box" whose __gc drops the jansson reference, so
 * a Lua error while converting them (out of memory, stack overflow) cannot leak.
 */
static int claims_box_gc(lua_State *L)
{
    json_t **box = luaL_checkudata(L, 1, CLAIMS_BOX_MT);

    json_decref(*box);
    *box = NULL;
    return 0;
}

static json_t **push_claims_box(lua_State *L)
{
    json_t **box = lua_newuserdatauv(L, sizeof(*box), 0);

    *box = NULL;
    luaL_setmetatable(L, CLAIMS_BOX_MT);
    return box;
}

static void release_box(json_t **box)
{
    json_decref(*box);
    *box = NULL;
}

/* Tags the table on top with host.json's marker metatable when that module is loaded. */
static void set_marker_mt(lua_State *L, const char *name)
{
    if (luaL_getmetatable(L, name) == LUA_TTABLE)
        lua_setmetatable(L, -2);
    else
        lua_pop(L, 1);
}

static void push_json(lua_State *L, const json_t *v, int depth)
{
    luaL_checkstack(L, 3, "JWT claims nest too deeply");
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *item;

        if (depth >= CLAIMS_MAX_DEPTH) {
            lua_pushnil(L);
            break;
        }
        lua_createtable(L, 0, (int)json_object_size(v));
        json_object_foreach((json_t *)v, k, item) {
            lua_pushstring(L, k);
            push_json(L, item, depth + 1);
            lua_rawset(L, -3);
        }
        set_marker_mt(L, HOST_JSON_OBJECT_MT);
        break;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *item;

        if (depth >= CLAIMS_MAX_DEPTH) {
            lua_pushnil(L);
            break;
        }
        lua_createtable(L, (int)json_array_size(v), 0);
        json_array_foreach((json_t *)v, i, item) {
            push_json(L, item, depth + 1);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        set_marker_mt(L, HOST_JSON_ARRAY_MT);
        break;
    }
    case JSON_STRING:
        lua_pushlstring(L, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        lua_pushinteger(L, (lua_Integer)json_integer_value(v));
        break;
    case JSON_REAL:
        lua_pushnumber(L, (lua_Number)json_real_value(v));
        break;
    case JSON_TRUE:
        lua_pushboolean(L, 1);
        break;
    case JSON_FALSE:
        lua_pushboolean(L, 0);
        break;
    case JSON_NULL:
    default:
        host_push_null(L);
        break;
    }
}

static int nonempty_string(const json_t *v)
{
    return json_is_string(v) && json_string_length(v) > 0;
}

/* `aud` may be absent; when present it must name "authenticated" (string or array). */
static int supabase_aud_ok(const json_t *aud)
{
    size_t i;
    json_t *item;

    if (aud == NULL)
        return 1;
    if (json_is_string(aud))
        return strcmp(json_string_value(aud), "authenticated") == 0;
    if (json_is_array(aud)) {
        json_array_foreach(aud, i, item) {
            if (json_is_string(item) && strcmp(json_string_value(item), "authenticated") == 0)
                return 1;
        }
    }
    return 0;
}

/* jwt.issue(user_id, type) -> token, expires_in */
static int l_jwt_issue(lua_State *L)
{
    char buf[ISSUE_BUF_LEN];
    size_t uid_len;
    const char *user_id = luaL_checklstring(L, 1, &uid_len);
    const char *type = luaL_checkstring(L, 2);
    const char *scope = luaL_optstring(L, 3, NULL);
    const char *why = NULL;
    long expires_in = 0;

    if (issue_token(user_id, uid_len, type, scope, buf, sizeof(buf), &expires_in, &why) != 0)
        return luaL_error(L, "jwt.issue: %s", why);
    lua_pushstring(L, buf);
    lua_pushinteger(L, (lua_Integer)expires_in);
    return 2;
}

/* jwt.verify(token, expected_type) -> claims | nil, err */
static int l_jwt_verify(lua_State *L)
{
    size_t len;
    const char *token = luaL_checklstring(L, 1, &len);
    const char *expected = luaL_checkstring(L, 2);
    const char *msg = NULL;
    const json_t *type;
    json_t **box;
    jwtv_status st;

    if (!g_cfg.configured)
        return luaL_error(L, "jwt.verify: host.jwt is not configured");
    box = push_claims_box(L);
    st = jwtv_verify(token, len, g_cfg.server_key, (int64_t)time(NULL), box);
    if (st != JWTV_OK) {
        msg = jwtv_status_message(st);
    } else {
        type = json_object_get(*box, "type");
        if (!json_is_string(type) || strcmp(json_string_value(type), expected) != 0) {
            release_box(box);
            lua_pushnil(L);
            lua_pushfstring(L, "Invalid token type. Expected %s", expected);
            return 2;
        }
        if (!nonempty_string(json_object_get(*box, "user_id")))
            msg = "missing user_id";
    }
    if (msg != NULL) {
        release_box(box);
        lua_pushnil(L);
        lua_pushstring(L, msg);
        return 2;
    }
    push_json(L, *box, 0);
    release_box(box);
    return 1;
}

/* jwt.verify_supabase(token) -> claims | nil, err */
static int l_jwt_verify_supabase(lua_State *L)
{
    size_t len;
    const char *token = luaL_checklstring(L, 1, &len);
    const char *msg = NULL;
    int64_t now = (int64_t)time(NULL);
    json_t **box = push_claims_box(L);
    jwtv_status st;

    if (g_cfg.supabase_key != NULL) {
        st = jwtv_verify(token, len, g_cfg.supabase_key, now, box);
    } else if (pthread_rwlock_rdlock(&g_jwks_lock) != 0) {
        st = JWTV_ERR_INTERNAL;
    } else {
        st = g_jwks == NULL ? JWTV_ERR_NO_KEY : jwtv_verify_keyset(token, len, g_jwks, now, box);
        pthread_rwlock_unlock(&g_jwks_lock);
    }

    if (st == JWTV_ERR_NO_KEY) {
        msg = "Supabase auth not configured";
    } else if (st != JWTV_OK) {
        msg = jwtv_status_message(st);
    } else {
        const json_t *role = json_object_get(*box, "role");
        /* Role first: anon and service_role keys are JWTs too, and they carry no sub. */
        if (!json_is_string(role) || strcmp(json_string_value(role), "authenticated") != 0)
            msg = "Token role must be authenticated";
        else if (!nonempty_string(json_object_get(*box, "sub")))
            msg = "missing sub";
        else if (!supabase_aud_ok(json_object_get(*box, "aud")))
            msg = "Invalid token audience";
    }
    if (msg != NULL) {
        release_box(box);
        lua_pushnil(L);
        lua_pushstring(L, msg);
        return 2;
    }
    push_json(L, *box, 0);
    release_box(box);
    return 1;
}

/* jwt.set_jwks(json) -> true | nil, err */
static int l_jwt_set_jwks(lua_State *L)
{
    char err[256];
    size_t len;
    const char *json = luaL_checklstring(L, 1, &len);

    if (host_jwt_set_jwks(json, len, err, sizeof(err)) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

int host_open_jwt(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"issue", l_jwt_issue},
        {"verify", l_jwt_verify},
        {"verify_supabase", l_jwt_verify_supabase},
        {"set_jwks", l_jwt_set_jwks},
        {NULL, NULL},
    };

    if (luaL_newmetatable(L, CLAIMS_BOX_MT)) {
        lua_pushcfunction(L, claims_box_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushliteral(L, "locked");
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
    luaL_newlib(L, funcs);
    /* The clock skew jwt.verify allows on exp/nbf/iat, for Lua that rechecks them. */
    lua_pushinteger(L, JWTV_LEEWAY_S);
    lua_setfield(L, -2, "leeway");
    return 1;
}
