/*
 * host.jwt: token issuing and verification for the host and its Lua code.
 *
 * Tokens are created with libjwt 1.10.2 (HS256, server secret). Verification never
 * goes through libjwt: it uses the strict verifier in host/jwt_verify.h, with the
 * algorithm pinned by the key, constant-time MAC comparison and mandatory `exp`.
 *
 * Threading: host_jwt_configure() writes process-global configuration and must be
 * called once at start-up, before any worker thread or lua_State exists; afterwards
 * that configuration is read-only. The Supabase JWKS key set may be replaced at any
 * time from any thread (host_jwt_set_jwks(), jwt.set_jwks()); it is guarded by a
 * rwlock, so verifications in other threads see either the old or the new set.
 *
 * Lua never sees a secret. The module table pushed by host_open_jwt() holds:
 *
 *   jwt.issue(user_id, type[, scope]) -> token, expires_in      (type "access"|"refresh"|"stream";
 *                                       a "stream" token lives HOST_JWT_STREAM_TTL seconds and
 *                                       carries the required `scope` claim, e.g. "task:42")
 *   jwt.verify(token, expected_type)  -> claims | nil, err
 *   jwt.verify_supabase(token)        -> claims | nil, err
 *   jwt.set_jwks(json)                -> true | nil, err
 *   jwt.leeway                        integer: seconds of clock skew allowed on exp, nbf and
 *                                     iat (JWTV_LEEWAY_S), for Lua that rechecks them
 *
 * Error strings returned to Lua are safe to show to API clients: "Invalid token",
 * "Token has expired", "Token is not yet valid", "Signature verification failed",
 * "Algorithm not allowed", "Unknown signing key", "Invalid token type. Expected <t>",
 * "missing user_id", "missing sub", "Token role must be authenticated",
 * "Invalid token audience", "Supabase auth not configured". They never contain the
 * token or a secret.
 */
#ifndef HOST_JWT_H
#define HOST_JWT_H

#include <stddef.h>

#include <lua.h>

/** Shortest accepted HS256 secret (RFC 7518 §3.2: key size >= hash output). */
#define HOST_JWT_MIN_SECRET_LEN 32

/** Longest `user_id` that jwt.issue()/host_jwt_issue_c() accept, in bytes. */
#define HOST_JWT_MAX_USER_ID_LEN 256

/** Lifetime of "stream" tokens (EventSource URLs), in seconds. */
#define HOST_JWT_STREAM_TTL 300

/**
 * Configures the module. Call once at start-up, before threads start and before any
 * Lua runs; calling it again replaces the configuration and is not thread-safe.
 *
 * @param secret          the server HS256 secret (JWT_SECRET), at least 32 bytes; copied.
 * @param supabase_secret the legacy Supabase HS256 secret, or NULL/0 when Supabase tokens
 *                        are verified with a JWKS (or not at all); at least 32 bytes
 *                        when given; copied.
 * @param access_ttl_s    lifetime of access tokens in seconds (> 0).
 * @param refresh_ttl_s   lifetime of refresh tokens in seconds (> 0).
 * @param err             receives a readable message on failure, e.g.
 *                        "JWT_SECRET must be at least 32 bytes". May be NULL.
 * @return 0 on success, -1 on failure (the previous configuration is kept).
 */
int host_jwt_configure(const char *secret, size_t secret_len, const char *supabase_secret,
                       size_t supabase_len, long access_ttl_s, long refresh_ttl_s, char *err,
                       size_t errlen);

/**
 * Replaces the Supabase JWKS key set with the ES256/RS256 keys in `json`
 * (a `{"keys":[...]}` document). Thread-safe: verifications running in other threads
 * finish with the old set, which is freed once they are done.
 *
 * @return 0 on success; -1 with a message in `err` (the old set stays in use).
 */
int host_jwt_set_jwks(const char *json, size_t len, char *err, size_t errlen);

/**
 * Issues an HS256 token for the CLI and other C callers, exactly as jwt.issue() does:
 * claims `user_id`, `type`, `exp` = now + ttl, `iat` = now.
 *
 * @param type        "access" or "refresh".
 * @param out_token   receives a malloc'd NUL-terminated token; release it with free().
 * @param expires_in  receives the token lifetime in seconds (may be NULL).
 * @return 0 on success; -1 if not configured, on bad arguments or on failure.
 */
int host_jwt_issue_c(const char *user_id, const char *type, char **out_token, long *expires_in);

/**
 * Frees all global state (secrets are cleansed, the JWKS set is released) and returns
 * the module to "not configured". For orderly shutdown and tests; call only when no
 * other thread uses the module.
 */
void host_jwt_shutdown(void);

/**
 * Lua opener: pushes the host.jwt module table (issue, verify, verify_supabase,
 * set_jwks) and returns 1. Safe to call in every lua_State of every thread.
 */
int host_open_jwt(lua_State *L);

#endif
