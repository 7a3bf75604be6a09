/*
 * Unit tests for host.jwt (l_jwt.c) and the strict verifier (jwt_verify.c).
 *
 * Tokens under attack are crafted here with OpenSSL directly (own base64url, own HMAC,
 * own ECDSA/RSA signing), so the verifier is never checked against itself. The one
 * foreign token comes from PyJWT 2.6.0 (python3-jwt), generated when this test was
 * written:
 *   /usr/bin/python3 -c 'import jwt; print(jwt.encode({"user_id":"pyjwt-user",
 *       "type":"access","exp":4102444800,"iat":1700000000}, SECRET, algorithm="HS256"))'
 *
 * Build: gcc -std=c11 -Wall -Wextra -Ihost/include -I/usr/include/lua5.4 \
 *   tests/unit/test_jwt.c host/src/l_jwt.c host/src/jwt_verify.c host/src/common.c \
 *   -llua5.4 -ljwt -ljansson -lcrypto -lpthread -lm -o build/test_jwt
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include "host/jwt.h"
#include "host/jwt_verify.h"
#include "../support/b64url.h"
#include "tap.h"

#define SECRET "unit-test-secret-0123456789abcdefghijklmnopqrstuv"
#define SUPA_SECRET "supabase-legacy-secret-abcdefghijklmnopqrstuvwxyz"
#define OTHER_SECRET "some-other-secret-that-is-long-enough-0123456789"
#define ACCESS_TTL 900
#define REFRESH_TTL 604800

static const char *const PYJWT_TOKEN =
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJ1c2VyX2lkIjoicHlqd3QtdXNlciIsInR5cGUiOiJhY2Nlc3MiLCJleHAiOjQxMDI0NDQ4MDAsImlhdCI6MTcwMDAw"
    "MDAwMH0.rf9Wdj9RoqxbTdTrskqvcYATgBUaLL-t-HH_j_2HuBo";

static lua_State *L;
static char *owned[512];
static size_t n_owned;

/* Every crafted string is parked here and freed at the end, keeping the tests short. */
static char *keep(char *p)
{
    if (p != NULL && n_owned < sizeof(owned) / sizeof(owned[0]))
        owned[n_owned++] = p;
    return p;
}

static int streq(const char *a, const char *b)
{
    return a != NULL && b != NULL && strcmp(a, b) == 0;
}

/* ---- token crafting (independent of jwt_verify.c) -------------------------------------- */

static char *b64s(const char *s)
{
    return b64url((const unsigned char *)s, strlen(s));
}

static char *join3(const char *a, const char *b, const char *c)
{
    size_t n = strlen(a) + strlen(b) + strlen(c) + 3;
    char *out = malloc(n);

    snprintf(out, n, "%s.%s.%s", a, b, c);
    return out;
}

/* "<b64 hdr>.<b64 payload>" */
static char *signing_input(const char *hdr, const char *pay)
{
    char *h = b64s(hdr), *p = b64s(pay);
    size_t n = strlen(h) + strlen(p) + 2;
    char *out = malloc(n);

    snprintf(out, n, "%s.%s", h, p);
    free(h);
    free(p);
    return out;
}

static char *with_sig(char *input, const unsigned char *sig, size_t siglen)
{
    char *s = b64url(sig, siglen);
    size_t n = strlen(input) + strlen(s) + 2;
    char *out = malloc(n);

    snprintf(out, n, "%s.%s", input, s);
    free(s);
    free(input);
    return keep(out);
}

static char *tok_hmac(const char *hdr, const char *pay, const EVP_MD *md, const void *key,
                      size_t keylen)
{
    char *input = signing_input(hdr, pay);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;

    HMAC(md, key, (int)keylen, (const unsigned char *)input, strlen(input), mac, &maclen);
    return with_sig(input, mac, maclen);
}

static char *tok_hs256(const char *hdr, const char *pay)
{
    return tok_hmac(hdr, pay, EVP_sha256(), SECRET, strlen(SECRET));
}

/* ES256 (raw r||s unless `der`) or RS256 depending on the key type. */
static char *tok_pkey(const char *hdr, const char *pay, EVP_PKEY *pkey, int der)
{
    char *input = signing_input(hdr, pay);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char sig[1024], raw[64];
    size_t siglen = sizeof(sig);
    char *out;

    EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, pkey);
    EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)input, strlen(input));
    EVP_MD_CTX_free(ctx);
    if (EVP_PKEY_is_a(pkey, "EC") && !der) {
        const unsigned char *p = sig;
        ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)siglen);
        BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, 32);
        BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + 32, 32);
        ECDSA_SIG_free(es);
        return with_sig(input, raw, 64);
    }
    out = with_sig(input, sig, siglen);
    return out;
}

static char *tok_raw(const char *hdr, const char *pay, const char *sig_b64)
{
    char *h = b64s(hdr), *p = b64s(pay);
    char *out = join3(h, p, sig_b64);

    free(h);
    free(p);
    return keep(out);
}

/* snprintf into a kept buffer; formats use zero, one or two %lld (extra args are ignored). */
static char *fmt(const char *f, long long a, long long b)
{
    char *out = malloc(16384);

    snprintf(out, 16384, f, a, b);
    return keep(out);
}

static char *bn_b64(EVP_PKEY *pkey, const char *param, int pad)
{
    BIGNUM *bn = NULL;
    unsigned char buf[1024];
    int n;

    EVP_PKEY_get_bn_param(pkey, param, &bn);
    n = pad > 0 ? BN_bn2binpad(bn, buf, pad) : BN_bn2bin(bn, buf);
    BN_free(bn);
    return keep(b64url(buf, (size_t)n));
}

static char *ec_jwk(EVP_PKEY *k, const char *kid)
{
    char *out = malloc(512);

    snprintf(out, 512,
             "{\"kty\":\"EC\",\"crv\":\"P-256\",\"alg\":\"ES256\",\"use\":\"sig\",\"kid\":\"%s\","
             "\"x\":\"%s\",\"y\":\"%s\"}",
             kid, bn_b64(k, OSSL_PKEY_PARAM_EC_PUB_X, 32), bn_b64(k, OSSL_PKEY_PARAM_EC_PUB_Y, 32));
    return keep(out);
}

static char *rsa_jwk(EVP_PKEY *k, const char *kid)
{
    char *out = malloc(2048);

    snprintf(out, 2048,
             "{\"kty\":\"RSA\",\"alg\":\"RS256\",\"kid\":\"%s\",\"n\":\"%s\",\"e\":\"%s\"}", kid,
             bn_b64(k, OSSL_PKEY_PARAM_RSA_N, 0), bn_b64(k, OSSL_PKEY_PARAM_RSA_E, 0));
    return keep(out);
}

static char *jwks_of(const char *a, const char *b, const char *c)
{
    char *out = malloc(8192);

    snprintf(out, 8192, "{\"keys\":[%s%s%s%s%s]}", a, b ? "," : "", b ? b : "", c ? "," : "",
             c ? c : "");
    return keep(out);
}

/* ---- Lua helpers ----------------------------------------------------------------------- */

/*
 * Calls jwt.<fn>(a[, b]). Returns NULL when a claims table came back (stored in the
 * global `claims`), else the error string; raised errors come back as "raised: ...".
 */
static const char *lcall(const char *fn, const char *a, const char *b)
{
    static char msg[512];
    int nargs = b != NULL ? 2 : 1;

    lua_settop(L, 0);
    lua_getglobal(L, "jwt");
    lua_getfield(L, -1, fn);
    lua_remove(L, 1);
    lua_pushstring(L, a);
    if (b != NULL)
        lua_pushstring(L, b);
    if (lua_pcall(L, nargs, 2, 0) != LUA_OK) {
        snprintf(msg, sizeof(msg), "raised: %s", lua_tostring(L, -1));
        lua_settop(L, 0);
        return msg;
    }
    if (lua_istable(L, 1)) {
        lua_pushvalue(L, 1);
        lua_setglobal(L, "claims");
        lua_settop(L, 0);
        return NULL;
    }
    snprintf(msg, sizeof(msg), "%s", lua_isstring(L, 2) ? lua_tostring(L, 2) : "?");
    lua_settop(L, 0);
    return msg;
}

static const char *lverify(const char *token, const char *type)
{
    return lcall("verify", token, type);
}

static const char *lsupa(const char *token)
{
    return lcall("verify_supabase", token, NULL);
}

/* Runs a Lua chunk and returns the truthiness of its first result (0 on error). */
static int lcheck(const char *chunk)
{
    int r;

    if (luaL_dostring(L, chunk) != LUA_OK) {
        printf("# lua error: %s\n", lua_tostring(L, -1));
        lua_settop(L, 0);
        return 0;
    }
    r = lua_toboolean(L, 1);
    lua_settop(L, 0);
    return r;
}

static int raised(const char *r)
{
    return r != NULL && strncmp(r, "raised: ", 8) == 0;
}

/* ---- concurrent JWKS swap ------------------------------------------------------------- */

struct worker {
    const char *token;
    int failures;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    lua_State *T = luaL_newstate();

    host_open_jwt(T);
    lua_setglobal(T, "jwt");
    for (int i = 0; i < 40; i++) {
        lua_getglobal(T, "jwt");
        lua_getfield(T, -1, "verify_supabase");
        lua_pushstring(T, w->token);
        if (lua_pcall(T, 1, 2, 0) != LUA_OK || !lua_istable(T, -2))
            w->failures++;
        lua_settop(T, 0);
    }
    lua_close(T);
    return NULL;
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_base64url(void)
{
    unsigned char out[16];
    size_t n = 99;

    ok(jwtv_b64url_decode("", 0, out, &n) == 0 && n == 0, "b64url: empty input decodes to nothing");
    ok(jwtv_b64url_decode("QUJD", 4, out, &n) == 0 && n == 3 && memcmp(out, "ABC", 3) == 0,
       "b64url: QUJD -> ABC");
    ok(jwtv_b64url_decode("QQ", 2, out, &n) == 0 && n == 1 && out[0] == 'A', "b64url: QQ -> A");
    ok(jwtv_b64url_decode("QR", 2, out, &n) != 0, "b64url: non-zero trailing bits rejected");
    ok(jwtv_b64url_decode("QQ==", 4, out, &n) != 0, "b64url: padding rejected");
    ok(jwtv_b64url_decode("Q", 1, out, &n) != 0, "b64url: 4k+1 length rejected");
    ok(jwtv_b64url_decode("a+b/", 4, out, &n) != 0, "b64url: standard-alphabet + and / rejected");
    ok(jwtv_b64url_decode("QU JD", 5, out, &n) != 0, "b64url: whitespace rejected");
}

static void test_unconfigured(void)
{
    char err[128] = "";
    char *tok = NULL;
    const char *valid = PYJWT_TOKEN;
    jwtv_key *k;

    ok(host_jwt_configure("0123456789abcdef0123456789abcde", 31, NULL, 0, ACCESS_TTL, REFRESH_TTL,
                          err, sizeof(err)) == -1 &&
           streq(err, "JWT_SECRET must be at least 32 bytes"),
       "configure: 31-byte secret refused with readable message");
    ok(host_jwt_configure(NULL, 0, NULL, 0, ACCESS_TTL, REFRESH_TTL, err, sizeof(err)) == -1,
       "configure: NULL secret refused");
    ok(host_jwt_configure(SECRET, strlen(SECRET), "short", 5, ACCESS_TTL, REFRESH_TTL, err,
                          sizeof(err)) == -1 &&
           streq(err, "SUPABASE_JWT_SECRET must be at least 32 bytes"),
       "configure: short Supabase secret refused");
    ok(host_jwt_configure(SECRET, strlen(SECRET), NULL, 0, 0, REFRESH_TTL, err, sizeof(err)) == -1,
       "configure: zero TTL refused");

    ok(raised(lcall("issue", "u1", "access")), "unconfigured: jwt.issue raises");
    ok(raised(lverify(valid, "access")), "unconfigured: jwt.verify raises (no secretless verify)");
    ok(streq(lsupa(valid), "Supabase auth not configured"),
       "unconfigured: verify_supabase -> Supabase auth not configured");
    ok(host_jwt_issue_c("u1", "access", &tok, NULL) == -1 && tok == NULL,
       "unconfigured: host_jwt_issue_c fails");

    ok(jwtv_key_hs256(NULL, 0) == NULL && jwtv_key_hs256((const unsigned char *)"", 0) == NULL,
       "verifier: an HS256 key with an empty secret cannot be built");
    ok(jwtv_verify(valid, strlen(valid), NULL, time(NULL), NULL) == JWTV_ERR_NO_KEY,
       "verifier: NULL key -> JWTV_ERR_NO_KEY (secretless verification refused)");
    ok(jwtv_verify_keyset(valid, strlen(valid), NULL, time(NULL), NULL) == JWTV_ERR_NO_KEY,
       "verifier: NULL key set -> JWTV_ERR_NO_KEY");
    k = jwtv_key_hs256((const unsigned char *)SECRET, strlen(SECRET));
    ok(jwtv_verify(valid, strlen(valid), k, time(NULL), NULL) == JWTV_OK,
       "verifier: PyJWT token verifies with the right key");
    jwtv_key_free(k);
}

static void test_issue_roundtrip(void)
{
    char err[128] = "";
    char *ctok = NULL;
    long exp_in = 0;
    const char *r;

    ok(host_jwt_configure(SECRET, strlen(SECRET), SUPA_SECRET, strlen(SUPA_SECRET), ACCESS_TTL,
                          REFRESH_TTL, err, sizeof(err)) == 0,
       "configure: valid secrets accepted");

    ok(lcheck("tok, ttl = jwt.issue('user-42', 'access') return type(tok) == 'string' and "
              "ttl == 900 and math.type(ttl) == 'integer'"),
       "issue: access token string and expires_in 900");
    lua_getglobal(L, "tok");
    r = lverify(lua_tostring(L, -1), "access");
    ok(r == NULL, "round trip: access token verifies (%s)", r ? r : "ok");
    ok(lcheck("local n = 0 for _ in pairs(claims) do n = n + 1 end "
              "return n == 4 and claims.user_id == 'user-42' and claims.type == 'access'"),
       "round trip: claims are exactly user_id, type, exp, iat");
    ok(lcheck("return math.type(claims.exp) == 'integer' and math.type(claims.iat) == 'integer' "
              "and claims.exp - claims.iat == 900 and math.abs(claims.iat - os.time()) <= 2"),
       "round trip: exp - iat == access ttl, iat is now, both integers");

    ok(lcheck("rtok, rttl = jwt.issue('user-42', 'refresh') return rttl == 604800"),
       "issue: refresh token expires_in 604800");
    lua_getglobal(L, "rtok");
    r = lverify(lua_tostring(L, -1), "refresh");
    ok(r == NULL && lcheck("return claims.exp - claims.iat == 604800 and claims.type == 'refresh'"),
       "round trip: refresh token verifies as refresh, exp - iat == refresh ttl");
    lua_getglobal(L, "rtok");
    ok(streq(lverify(lua_tostring(L, -1), "access"), "Invalid token type. Expected access"),
       "refresh token presented as access -> type message");
    lua_getglobal(L, "tok");
    ok(streq(lverify(lua_tostring(L, -1), "refresh"), "Invalid token type. Expected refresh"),
       "access token presented as refresh -> type message");
    lua_settop(L, 0);

    /* The libjwt-made token, checked by an HMAC computed here, not by our verifier. */
    ok(lcheck("local h, p, s = tok:match('^([^.]+)%.([^.]+)%.([^.]+)$') "
              "_G.h, _G.p, _G.s = h, p, s return h == 'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9'"),
       "issue: header is exactly {\"alg\":\"HS256\",\"typ\":\"JWT\"}");
    {
        lua_getglobal(L, "h");
        lua_getglobal(L, "p");
        lua_getglobal(L, "s");
        char *input = malloc(4096);
        unsigned char mac[32];
        unsigned int maclen = 0;
        snprintf(input, 4096, "%s.%s", lua_tostring(L, 1), lua_tostring(L, 2));
        HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (unsigned char *)input, strlen(input), mac,
             &maclen);
        char *sig = b64url(mac, maclen);
        ok(streq(sig, lua_tostring(L, 3)), "issue: signature equals an independent HMAC-SHA256");
        free(sig);
        free(input);
        lua_settop(L, 0);
    }

    ok(raised(lcall("issue", "u1", "admin")), "issue: unknown type raises");
    ok(raised(lcall("issue", "", "access")), "issue: empty user_id raises");
    ok(lcheck("return not pcall(jwt.issue, 'a\\0b', 'access')"), "issue: user_id with NUL raises");

    ok(host_jwt_issue_c("cli-user", "access", &ctok, &exp_in) == 0 && ctok != NULL &&
           exp_in == ACCESS_TTL,
       "host_jwt_issue_c: issues an access token");
    ok(ctok != NULL && lverify(ctok, "access") == NULL &&
           lcheck("return claims.user_id == 'cli-user'"),
       "host_jwt_issue_c: token verifies with jwt.verify");
    free(ctok);
    ok(host_jwt_issue_c("cli-user", "bogus", &ctok, &exp_in) == -1 && ctok == NULL,
       "host_jwt_issue_c: bad type refused");
}

static void test_claims(void)
{
    const char *hdr = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    long long now = (long long)time(NULL);
    jwtv_key *k = jwtv_key_hs256((const unsigned char *)SECRET, strlen(SECRET));
    const char *base = "{\"user_id\":\"u1\",\"type\":\"access\",\"exp\":%lld}";
    char *t;

    t = tok_hs256(hdr, fmt(base, now - 60, 0));
    ok(streq(lverify(t, "access"), "Token has expired"), "exp 60 s ago -> Token has expired");
    t = tok_hs256(hdr, fmt(base, now - 10, 0));
    ok(lverify(t, "access") == NULL, "exp 10 s ago is accepted within the 30 s leeway");
    t = tok_hs256(hdr, fmt(base, 1000, 0));
    ok(jwtv_verify(t, strlen(t), k, 1030, NULL) == JWTV_OK, "leeway boundary: now == exp + 30 ok");
    ok(jwtv_verify(t, strlen(t), k, 1031, NULL) == JWTV_ERR_EXPIRED,
       "leeway boundary: now == exp + 31 expired");

    t = tok_hs256(hdr, "{\"user_id\":\"u1\",\"type\":\"access\"}");
    ok(streq(lverify(t, "access"), "Invalid token"), "missing exp -> Invalid token");
    t = tok_hs256(hdr,
                  fmt("{\"user_id\":\"u1\",\"type\":\"access\",\"exp\":\"%lld\"}", now + 600, 0));
    ok(streq(lverify(t, "access"), "Invalid token"), "exp as a string -> Invalid token");
    t = tok_hs256(hdr, "{\"user_id\":\"u1\",\"type\":\"access\",\"exp\":1e300}");
    ok(streq(lverify(t, "access"), "Invalid token"), "exp 1e300 -> Invalid token");
    t = tok_hs256(hdr,
                  fmt("{\"user_id\":\"u1\",\"type\":\"access\",\"exp\":%lld.5}", now + 600, 0));
    ok(streq(lverify(t, "access"), "Invalid token"), "fractional exp -> Invalid token");
    t = tok_hs256(hdr,
                  fmt("{\"user_id\":\"u1\",\"type\":\"access\",\"exp\":%lld.0}", now + 600, 0));
    ok(lverify(t, "access") == NULL, "integral real exp (N.0) accepted");
    t = tok_hs256(hdr, fmt("{\"user_id\":\"u1\",\"type\":\"access\",\"exp\":-%lld}", 5, 0));
    ok(streq(lverify(t, "access"), "Invalid token"), "negative exp -> Invalid token");

    t = tok_hs256(hdr, fmt("{\"user_id\":\"u1\",\"type\":\"access\",\"exp\":%lld,\"nbf\":%lld}",
                           now + 600, now + 120));
    ok(streq(lverify(t, "access"), "Token is not yet valid"), "nbf 120 s ahead -> not yet valid");
    t = tok_hs256(hdr, fmt("{\"user_id\":\"u1\",\"type\":\"access\",\"exp\":%lld,\"nbf\":%lld}",
                           now + 600, now + 10));
    ok(lverify(t, "access") == NULL, "nbf 10 s ahead accepted within leeway");
    t = tok_hs256(hdr, fmt("{\"user_id\":\"u1\",\"type\":\"access\",\"exp\":%lld,\"iat\":\"%lld\"}",
                           now + 600, now));
    ok(streq(lverify(t, "access"), "Invalid token"), "iat as a string -> Invalid token");
    t = tok_hs256(hdr, fmt("{\"user_id\":\"u1\",\"type\":\"access\",\"exp\":%lld,\"iat\":%lld}",
                           now + 6000, now + 3600));
    ok(streq(lverify(t, "access"), "Token is not yet valid"), "iat an hour ahead -> rejected");

    t = tok_hs256(hdr, fmt("{\"type\":\"access\",\"exp\":%lld}", now + 600, 0));
    ok(streq(lverify(t, "access"), "missing user_id"), "missing user_id -> missing user_id");
    t = tok_hs256(hdr, fmt("{\"user_id\":\"\",\"type\":\"access\",\"exp\":%lld}", now + 600, 0));
    ok(streq(lverify(t, "access"), "missing user_id"), "empty user_id -> missing user_id");
    t = tok_hs256(hdr, fmt("{\"user_id\":42,\"type\":\"access\",\"exp\":%lld}", now + 600, 0));
    ok(streq(lverify(t, "access"), "missing user_id"), "numeric user_id -> missing user_id");
    t = tok_hs256(hdr, fmt("{\"user_id\":\"u1\",\"exp\":%lld}", now + 600, 0));
    ok(streq(lverify(t, "access"), "Invalid token type. Expected access"),
       "missing type -> type message");

    t = tok_hs256(hdr, fmt("{\"user_id\":\"u1\",\"type\":\"access\",\"exp\":%lld,\"exp\":%lld}",
                           now + 600, now + 999999));
    ok(streq(lverify(t, "access"), "Invalid token"), "duplicate claim keys -> Invalid token");
    t = tok_hs256(hdr, "[1,2,3]");
    ok(streq(lverify(t, "access"), "Invalid token"), "payload a JSON array -> Invalid token");
    t = tok_hs256(hdr, "not json");
    ok(streq(lverify(t, "access"), "Invalid token"), "payload not JSON -> Invalid token");

    t = tok_hs256(hdr, fmt("{\"user_id\":\"u1\",\"type\":\"access\",\"exp\":%lld,\"admin\":true,"
                           "\"n\":1.5,\"tags\":[\"a\",\"b\"],\"o\":{\"k\":null}}",
                           now + 600, 0));
    ok(lverify(t, "access") == NULL &&
           lcheck("return claims.admin == true and claims.n == 1.5 and claims.tags[2] == 'b' and "
                  "type(claims.o) == 'table' and claims.o.k ~= nil"),
       "claims table converts booleans, reals, arrays, objects and null");
    jwtv_key_free(k);
}

static void test_header_and_alg(void)
{
    long long now = (long long)time(NULL);
    char *pay = fmt("{\"user_id\":\"u1\",\"type\":\"access\",\"exp\":%lld}", now + 600, 0);
    char *good = tok_hs256("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", pay);
    char *t, *h, *p, *s;

    ok(lverify(good, "access") == NULL, "crafted HS256 token verifies");
    ok(streq(lverify(tok_raw("{\"alg\":\"none\",\"typ\":\"JWT\"}", pay, ""), "access"),
             "Invalid token"),
       "alg none with empty signature -> rejected");
    {
        /* none with a signature present: the alg itself must be refused */
        const char *sig = strrchr(good, '.') + 1;
        t = tok_raw("{\"alg\":\"none\"}", pay, sig);
        ok(streq(lverify(t, "access"), "Algorithm not allowed"), "alg none with a signature -> "
                                                                 "Algorithm not allowed");
        t = tok_raw("{\"alg\":\"NONE\"}", pay, sig);
        ok(streq(lverify(t, "access"), "Algorithm not allowed"),
           "alg NONE -> Algorithm not allowed");
        t = tok_raw("{\"typ\":\"JWT\"}", pay, sig);
        ok(streq(lverify(t, "access"), "Algorithm not allowed"),
           "missing alg -> Algorithm not allowed");
        t = tok_raw("{\"alg\":\"hs256\"}", pay, sig);
        ok(streq(lverify(t, "access"), "Algorithm not allowed"), "alg hs256 (case) -> not allowed");
    }
    t = tok_hmac("{\"alg\":\"HS512\",\"typ\":\"JWT\"}", pay, EVP_sha512(), SECRET, strlen(SECRET));
    ok(streq(lverify(t, "access"), "Algorithm not allowed"),
       "HS512 with the same secret -> rejected");
    t = tok_hmac("{\"alg\":\"HS384\",\"typ\":\"JWT\"}", pay, EVP_sha384(), SECRET, strlen(SECRET));
    ok(streq(lverify(t, "access"), "Algorithm not allowed"),
       "HS384 with the same secret -> rejected");
    t = tok_hmac("{\"alg\":\"HS256\"}", pay, EVP_sha256(), OTHER_SECRET, strlen(OTHER_SECRET));
    ok(streq(lverify(t, "access"), "Signature verification failed"), "wrong secret -> rejected");

    /* tampered payload: same header and signature, payload re-encoded with a new user */
    h = keep(b64s("{\"alg\":\"HS256\",\"typ\":\"JWT\"}"));
    p = keep(b64s(fmt("{\"user_id\":\"admin\",\"type\":\"access\",\"exp\":%lld}", now + 600, 0)));
    s = strrchr(good, '.') + 1;
    ok(streq(lverify(keep(join3(h, p, s)), "access"), "Signature verification failed"),
       "tampered payload -> Signature verification failed");
    t = keep(strdup(good));
    {
        char *sig = strrchr(t, '.') + 1;
        sig[0] = sig[0] == 'A' ? 'B' : 'A';
    }
    ok(streq(lverify(t, "access"), "Signature verification failed"),
       "tampered signature -> Signature verification failed");
    t = keep(strdup(good));
    t[strlen(t) - 3] = '\0';
    ok(streq(lverify(t, "access"), "Invalid token") ||
           streq(lverify(t, "access"), "Signature verification failed"),
       "truncated signature -> rejected");

    t = tok_hs256("{\"alg\":\"HS256\",\"typ\":\"jwt\"}", pay);
    ok(lverify(t, "access") == NULL, "typ jwt (lower case) accepted");
    t = tok_hs256("{\"alg\":\"HS256\",\"typ\":\"at+jwt\"}", pay);
    ok(streq(lverify(t, "access"), "Invalid token"), "typ at+jwt -> Invalid token");
    t = tok_hs256("{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", pay);
    ok(streq(lverify(t, "access"), "Invalid token"), "crit header -> Invalid token");
    t = tok_hs256("{\"alg\":\"HS256\",\"alg\":\"HS256\"}", pay);
    ok(streq(lverify(t, "access"), "Invalid token"), "duplicate header key -> Invalid token");
    t = tok_hs256("[\"HS256\"]", pay);
    ok(streq(lverify(t, "access"), "Invalid token"), "header a JSON array -> Invalid token");
    t = tok_hs256("{\"alg\":\"HS256\",\"kid\":\"whatever\"}", pay);
    ok(lverify(t, "access") == NULL, "kid is ignored for the single server key");

    /* segment counts and encoding */
    ok(streq(lverify("", "access"), "Invalid token"), "empty token -> Invalid token");
    ok(streq(lverify("abc", "access"), "Invalid token"), "one segment -> Invalid token");
    t = keep(strdup(good));
    *strrchr(t, '.') = '\0';
    ok(streq(lverify(t, "access"), "Invalid token"), "two segments -> Invalid token");
    t = keep(malloc(strlen(good) + 8));
    sprintf(t, "%s.AAAA", good);
    ok(streq(lverify(t, "access"), "Invalid token"), "four segments -> Invalid token");
    ok(streq(lverify("..", "access"), "Invalid token"), "empty segments -> Invalid token");
    t = keep(malloc(strlen(good) + 8));
    sprintf(t, "%s=", good);
    ok(streq(lverify(t, "access"), "Invalid token"), "padding '=' -> Invalid token");
    t = keep(strdup(good));
    t[5] = '+';
    ok(streq(lverify(t, "access"), "Invalid token"), "'+' in header -> Invalid token");
    t = keep(strdup(good));
    strchr(t, '.')[3] = '/';
    ok(streq(lverify(t, "access"), "Invalid token"), "'/' in payload -> Invalid token");
    t = keep(malloc(strlen(good) + 8));
    sprintf(t, " %s", good);
    ok(streq(lverify(t, "access"), "Invalid token"), "leading space -> Invalid token");
    ok(lcheck("local r, e = jwt.verify(tok:sub(1, 10) .. '\\0' .. tok:sub(12), 'access') "
              "return r == nil and e == 'Invalid token'"),
       "embedded NUL -> Invalid token");

    /* size cap */
    {
        char *pad = keep(malloc(6300));
        memset(pad, 'x', 6299);
        pad[6299] = '\0';
        char *bigpay = keep(malloc(7000));
        snprintf(bigpay, 7000,
                 "{\"user_id\":\"u1\",\"type\":\"access\",\"exp\":%lld,\"pad\":\"%s\"}", now + 600,
                 pad);
        t = tok_hs256("{\"alg\":\"HS256\"}", bigpay);
        ok(strlen(t) > JWTV_MAX_TOKEN_LEN && streq(lverify(t, "access"), "Invalid token"),
           "token over 8 KiB (%zu bytes, validly signed) -> Invalid token", strlen(t));
        pad[5800] = '\0';
        snprintf(bigpay, 7000,
                 "{\"user_id\":\"u1\",\"type\":\"access\",\"exp\":%lld,\"pad\":\"%s\"}", now + 600,
                 pad);
        t = tok_hs256("{\"alg\":\"HS256\"}", bigpay);
        ok(strlen(t) <= JWTV_MAX_TOKEN_LEN && lverify(t, "access") == NULL,
           "token just under 8 KiB (%zu bytes) accepted", strlen(t));
    }

    /* every single-character mutation of a good token is rejected */
    {
        static const char repl[] = "A_-0.z=";
        size_t n = strlen(good), accepted = 0, tried = 0;
        jwtv_key *k = jwtv_key_hs256((const unsigned char *)SECRET, strlen(SECRET));
        char *m = keep(strdup(good));
        for (size_t i = 0; i < n; i++) {
            for (size_t j = 0; j < sizeof(repl) - 1; j++) {
                if (good[i] == repl[j])
                    continue;
                m[i] = repl[j];
                tried++;
                if (jwtv_verify(m, n, k, now, NULL) == JWTV_OK)
                    accepted++;
                m[i] = good[i];
            }
        }
        ok(accepted == 0, "all %zu single-character mutations rejected", tried);
        jwtv_key_free(k);
    }
}

static void test_pyjwt_interop(void)
{
    const char *dot2 = strrchr(PYJWT_TOKEN, '.');
    size_t inlen = (size_t)(dot2 - PYJWT_TOKEN);
    unsigned char mac[32];
    unsigned int maclen = 0;
    char *sig;

    HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (const unsigned char *)PYJWT_TOKEN, inlen, mac,
         &maclen);
    sig = b64url(mac, maclen);
    ok(streq(sig, dot2 + 1), "PyJWT token: signature equals an independent OpenSSL HMAC");
    free(sig);
    ok(lverify(PYJWT_TOKEN, "access") == NULL &&
           lcheck("return claims.user_id == 'pyjwt-user' and claims.exp == 4102444800"),
       "PyJWT token: accepted by jwt.verify with its claims");
}

static void test_supabase_hs256(void)
{
    long long now = (long long)time(NULL);
    const char *hdr = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    char *t;

    t = tok_hmac(hdr,
                 fmt("{\"sub\":\"6f1c1c0e-8d0a-4c39-9d8b-0a4c6f3f8a11\",\"role\":\"authenticated\","
                     "\"aud\":\"authenticated\",\"exp\":%lld,\"iat\":%lld}",
                     now + 600, now),
                 EVP_sha256(), SUPA_SECRET, strlen(SUPA_SECRET));
    ok(lsupa(t) == NULL && lcheck("return claims.sub == '6f1c1c0e-8d0a-4c39-9d8b-0a4c6f3f8a11' "
                                  "and claims.role == 'authenticated'"),
       "supabase HS256: authenticated token accepted");
    t = tok_hmac(hdr,
                 fmt("{\"iss\":\"supabase\",\"ref\":\"abc\",\"role\":\"anon\",\"iat\":%lld,"
                     "\"exp\":%lld}",
                     now, now + 600),
                 EVP_sha256(), SUPA_SECRET, strlen(SUPA_SECRET));
    ok(streq(lsupa(t), "Token role must be authenticated"), "supabase HS256: anon key refused");
    t = tok_hmac(hdr,
                 fmt("{\"iss\":\"supabase\",\"ref\":\"abc\",\"role\":\"service_role\",\"iat\":%lld,"
                     "\"exp\":%lld}",
                     now, now + 600),
                 EVP_sha256(), SUPA_SECRET, strlen(SUPA_SECRET));
    ok(streq(lsupa(t), "Token role must be authenticated"),
       "supabase HS256: service_role key refused");
    t = tok_hmac(hdr, fmt("{\"role\":\"authenticated\",\"exp\":%lld}", now + 600, 0), EVP_sha256(),
                 SUPA_SECRET, strlen(SUPA_SECRET));
    ok(streq(lsupa(t), "missing sub"), "supabase HS256: missing sub refused");
    t = tok_hmac(hdr,
                 fmt("{\"sub\":\"x\",\"role\":\"authenticated\",\"aud\":\"other\",\"exp\":%lld}",
                     now + 600, 0),
                 EVP_sha256(), SUPA_SECRET, strlen(SUPA_SECRET));
    ok(streq(lsupa(t), "Invalid token audience"), "supabase HS256: foreign aud refused");
    t = tok_hmac(hdr, fmt("{\"sub\":\"x\",\"role\":\"authenticated\"}", 0, 0), EVP_sha256(),
                 SUPA_SECRET, strlen(SUPA_SECRET));
    ok(streq(lsupa(t), "Invalid token"), "supabase HS256: missing exp refused");
    t = tok_hmac(hdr, fmt("{\"sub\":\"x\",\"role\":\"authenticated\",\"exp\":%lld}", now - 100, 0),
                 EVP_sha256(), SUPA_SECRET, strlen(SUPA_SECRET));
    ok(streq(lsupa(t), "Token has expired"), "supabase HS256: expired refused");
    t = tok_hs256(hdr,
                  fmt("{\"sub\":\"x\",\"role\":\"authenticated\",\"exp\":%lld}", now + 600, 0));
    ok(streq(lsupa(t), "Signature verification failed"),
       "supabase HS256: token signed with the server secret refused");
    t = tok_hmac(
        hdr,
        fmt("{\"user_id\":\"u\",\"type\":\"access\",\"sub\":\"x\",\"role\":\"authenticated\","
            "\"exp\":%lld}",
            now + 600, 0),
        EVP_sha256(), SUPA_SECRET, strlen(SUPA_SECRET));
    ok(streq(lverify(t, "access"), "Signature verification failed"),
       "server verify: token signed with the Supabase secret refused");
}

/* ---- HS256 through the prepared HMAC context ------------------------------------------ */

struct hs_worker {
    const jwtv_key *key;
    const char *good, *tampered;
    long long now;
    int wrong;
};

static void *hs_worker_main(void *arg)
{
    struct hs_worker *w = arg;

    for (int i = 0; i < 2000; i++) {
        if (jwtv_verify(w->good, strlen(w->good), w->key, w->now, NULL) != JWTV_OK)
            w->wrong++;
        if (jwtv_verify(w->tampered, strlen(w->tampered), w->key, w->now, NULL) !=
            JWTV_ERR_SIGNATURE)
            w->wrong++;
    }
    return NULL;
}

static void test_hs256_prepared_mac(void)
{
    long long now = (long long)time(NULL);
    const char *hdr = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    char *pay =
        fmt("{\"user_id\":\"u\",\"type\":\"access\",\"exp\":%lld,\"iat\":%lld}", now + 600, now);
    static const size_t lens[] = {1, 31, 32, 63, 64, 65, 128, 200, 1000};
    unsigned char secret[1000];
    int all_ok = 1, all_refused = 1;

    /* RFC 7515 appendix A.1: the HS256 example, verified at its own `exp`. */
    {
        static const char jwk_k[] =
            "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0"
            "iPS4hcgUuTwjAzZr1Z9CAow";
        static const char rfc_token[] =
            "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9."
            "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ij"
            "p0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        unsigned char k[64];
        size_t klen = 0;
        jwtv_key *key;

        jwtv_b64url_decode(jwk_k, strlen(jwk_k), k, &klen);
        key = jwtv_key_hs256(k, klen);
        ok(key != NULL &&
               jwtv_verify(rfc_token, strlen(rfc_token), key, 1300819380, NULL) == JWTV_OK,
           "HS256: RFC 7515 A.1 example verifies");
        ok(key != NULL && jwtv_verify(rfc_token, strlen(rfc_token), key, 1300819380 + 31, NULL) ==
                              JWTV_ERR_EXPIRED,
           "HS256: RFC 7515 A.1 example expired 31 s after exp");
        k[klen - 1] ^= 1;
        jwtv_key_free(key);
        key = jwtv_key_hs256(k, klen);
        ok(key != NULL && jwtv_verify(rfc_token, strlen(rfc_token), key, 1300819380, NULL) ==
                              JWTV_ERR_SIGNATURE,
           "HS256: RFC 7515 A.1 example refused with a key one bit off");
        jwtv_key_free(key);
    }

    /* Keys shorter than, equal to and longer than SHA-256's 64-byte block (hashed first),
     * with NUL bytes inside, against an independent one-shot HMAC. */
    for (size_t i = 0; i < sizeof(secret); i++)
        secret[i] = (unsigned char)(i * 7 + 3);
    secret[5] = 0;
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        jwtv_key *key = jwtv_key_hs256(secret, lens[i]);
        char *good = tok_hmac(hdr, pay, EVP_sha256(), secret, lens[i]);
        unsigned char other[1000];
        char *foreign;

        memcpy(other, secret, lens[i]);
        other[lens[i] - 1] ^= 0x80;
        foreign = tok_hmac(hdr, pay, EVP_sha256(), other, lens[i]);
        all_ok &= key != NULL && jwtv_verify(good, strlen(good), key, now, NULL) == JWTV_OK;
        all_refused &= key != NULL &&
                       jwtv_verify(foreign, strlen(foreign), key, now, NULL) == JWTV_ERR_SIGNATURE;
        /* The same key, used again: a verification leaves the prepared context as it was. */
        all_ok &= key != NULL && jwtv_verify(good, strlen(good), key, now, NULL) == JWTV_OK;
        jwtv_key_free(key);
    }
    ok(all_ok, "HS256: keys of 1..1000 bytes verify tokens signed by HMAC(), twice in a row");
    ok(all_refused, "HS256: a key differing in its last byte is refused for each length");
    ok(jwtv_key_hs256(secret, 0) == NULL && jwtv_key_hs256(NULL, 32) == NULL,
       "HS256: no key without a secret");

    /* Wrong-length and truncated signatures never reach the MAC comparison as equal. */
    {
        jwtv_key *key = jwtv_key_hs256((const unsigned char *)SECRET, strlen(SECRET));
        char *good = tok_hs256(hdr, pay);
        char *input = signing_input(hdr, pay);
        unsigned char mac[32];
        unsigned int maclen = 0;
        char *short_sig, *long_sig;
        unsigned char longer[33];

        HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (const unsigned char *)input, strlen(input),
             mac, &maclen);
        short_sig = with_sig(strdup(input), mac, 31);
        memcpy(longer, mac, 32);
        longer[32] = 0;
        long_sig = with_sig(input, longer, 33);
        ok(jwtv_verify(good, strlen(good), key, now, NULL) == JWTV_OK &&
               jwtv_verify(short_sig, strlen(short_sig), key, now, NULL) == JWTV_ERR_SIGNATURE &&
               jwtv_verify(long_sig, strlen(long_sig), key, now, NULL) == JWTV_ERR_SIGNATURE,
           "HS256: 31- and 33-byte signatures refused, the 32-byte one accepted");
        jwtv_key_free(key);
    }

    /* One key shared by four threads, as the workers share the server key; each thread
     * verifies its own tokens, so a context shared by mistake would mix their inputs. */
    {
        jwtv_key *key = jwtv_key_hs256((const unsigned char *)SECRET, strlen(SECRET));
        pthread_t th[4];
        struct hs_worker w[4];
        int wrong = 0;

        for (int i = 0; i < 4; i++) {
            char *good = tok_hs256(hdr, fmt("{\"user_id\":\"user-%lld\",\"type\":\"access\","
                                            "\"exp\":%lld}",
                                            (long long)i * 1000003, now + 600));
            char *tampered = keep(strdup(good));
            size_t n = strlen(tampered);

            tampered[n - 2] = tampered[n - 2] == 'A' ? 'B' : 'A';
            w[i] = (struct hs_worker){key, good, tampered, now, 0};
        }
        for (int i = 0; i < 4; i++)
            pthread_create(&th[i], NULL, hs_worker_main, &w[i]);
        for (int i = 0; i < 4; i++) {
            pthread_join(th[i], NULL);
            wrong += w[i].wrong;
        }
        ok(wrong == 0, "HS256: 4 threads x 4000 verifications on one key, no wrong answer");
        jwtv_key_free(key);
    }
}

static void test_jwks(void)
{
    long long now = (long long)time(NULL);
    char err[256] = "";
    EVP_PKEY *ec = EVP_EC_gen("P-256");
    EVP_PKEY *ec2 = EVP_EC_gen("P-256");
    EVP_PKEY *rsa = EVP_RSA_gen(2048);
    EVP_PKEY *rsa_small = EVP_RSA_gen(1024);
    char *pay = fmt("{\"sub\":\"user-1\",\"role\":\"authenticated\",\"aud\":\"authenticated\","
                    "\"exp\":%lld,\"iat\":%lld}",
                    now + 600, now);
    char *jwks, *t, *pem;
    jwtv_keyset *ks;
    BIO *bio;
    long pemlen;

    /* Supabase via JWKS only: reconfigure without the legacy secret. */
    ok(host_jwt_configure(SECRET, strlen(SECRET), NULL, 0, ACCESS_TTL, REFRESH_TTL, err,
                          sizeof(err)) == 0,
       "configure: without Supabase secret");
    t = tok_pkey("{\"alg\":\"ES256\",\"kid\":\"ec-1\"}", pay, ec, 0);
    ok(streq(lsupa(t), "Supabase auth not configured"),
       "no secret and no JWKS -> Supabase auth not configured");

    jwks = jwks_of(ec_jwk(ec, "ec-1"), rsa_jwk(rsa, "rsa-1"),
                   "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"11qYAYKxCrfVS_"
                   "7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}"
                   ",{\"kty\":\"oct\",\"k\":\"c2VjcmV0\",\"kid\":\"hmac\"}");
    ks = jwtv_keyset_from_json(jwks, strlen(jwks), err, sizeof(err));
    ok(ks != NULL && jwtv_keyset_size(ks) == 2, "JWKS: EC + RSA kept, OKP and oct skipped (%s)",
       ks ? "ok" : err);
    jwtv_keyset_free(ks);
    lua_pushstring(L, jwks);
    lua_setglobal(L, "J");
    ok(lcheck("return jwt.set_jwks(J) == true"), "jwt.set_jwks(json) -> true");

    ok(lsupa(t) == NULL && lcheck("return claims.sub == 'user-1'"), "JWKS: ES256 token (kid) ok");
    t = tok_pkey("{\"alg\":\"RS256\",\"kid\":\"rsa-1\",\"typ\":\"JWT\"}", pay, rsa, 0);
    ok(lsupa(t) == NULL, "JWKS: RS256 token (kid) ok");
    t = tok_pkey("{\"alg\":\"ES256\"}", pay, ec, 0);
    ok(lsupa(t) == NULL, "JWKS: ES256 without kid uses the only ES256 key");
    t = tok_pkey("{\"alg\":\"RS256\"}", pay, rsa, 0);
    ok(lsupa(t) == NULL, "JWKS: RS256 without kid uses the only RS256 key");
    t = tok_pkey("{\"alg\":\"RS256\",\"kid\":\"ec-1\"}", pay, rsa, 0);
    ok(streq(lsupa(t), "Algorithm not allowed"), "JWKS: alg RS256 with the EC key's kid rejected");
    t = tok_pkey("{\"alg\":\"ES256\",\"kid\":\"rsa-1\"}", pay, ec, 0);
    ok(streq(lsupa(t), "Algorithm not allowed"), "JWKS: alg ES256 with the RSA key's kid rejected");
    t = tok_pkey("{\"alg\":\"ES256\",\"kid\":\"ec-1\"}", pay, ec2, 0);
    ok(streq(lsupa(t), "Signature verification failed"), "JWKS: ES256 signed by another key");
    t = tok_pkey("{\"alg\":\"ES256\",\"kid\":\"ec-1\"}", pay, ec, 1);
    ok(streq(lsupa(t), "Signature verification failed"), "JWKS: ES256 with DER signature rejected");
    t = tok_pkey("{\"alg\":\"ES256\",\"kid\":\"nope\"}", pay, ec, 0);
    ok(streq(lsupa(t), "Unknown signing key"), "JWKS: unknown kid -> Unknown signing key");
    t = tok_pkey("{\"alg\":\"ES256\",\"kid\":\"ec-1\"}",
                 fmt("{\"role\":\"anon\",\"iss\":\"supabase\",\"exp\":%lld}", now + 600, 0), ec, 0);
    ok(streq(lsupa(t), "Token role must be authenticated"), "JWKS: anon role refused");
    t = tok_pkey("{\"alg\":\"RS256\",\"kid\":\"rsa-1\"}",
                 fmt("{\"sub\":\"u\",\"role\":\"authenticated\",\"exp\":%lld}", now - 100, 0), rsa,
                 0);
    ok(streq(lsupa(t), "Token has expired"), "JWKS: expired RS256 refused");
    t = tok_pkey("{\"alg\":\"RS256\",\"kid\":\"rsa-1\"}",
                 fmt("{\"sub\":\"u\",\"role\":\"authenticated\"}", 0, 0), rsa, 0);
    ok(streq(lsupa(t), "Invalid token"), "JWKS: RS256 without exp refused");

    /* Algorithm confusion: the RSA public key's PEM used as an HMAC secret. */
    bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(bio, rsa);
    pemlen = BIO_get_mem_data(bio, &pem);
    t = tok_hmac("{\"alg\":\"HS256\",\"kid\":\"rsa-1\"}", pay, EVP_sha256(), pem, (size_t)pemlen);
    ok(streq(lsupa(t), "Algorithm not allowed"),
       "confusion: HS256 signed with RSA PEM (kid) rejected");
    t = tok_hmac("{\"alg\":\"HS256\"}", pay, EVP_sha256(), pem, (size_t)pemlen);
    ok(streq(lsupa(t), "Algorithm not allowed"),
       "confusion: HS256 signed with RSA PEM (no kid) rejected");
    BIO_free(bio);

    /* Broken key sets are refused and the previous set stays in use. */
    ok(lcheck("local r, e = jwt.set_jwks('not json') return r == nil and type(e) == 'string'"),
       "set_jwks: invalid JSON -> nil, err");
    ok(lcheck("local r, e = jwt.set_jwks('{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}]}') "
              "return r == nil and e:find('no usable') ~= nil"),
       "set_jwks: only an oct key -> nil, 'no usable key'");
    ok(lcheck("local r, e = jwt.set_jwks('{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\","
              "\"x\":\"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\","
              "\"y\":\"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}]}') return r == nil"),
       "set_jwks: EC point not on the curve -> refused");
    jwks = jwks_of(rsa_jwk(rsa_small, "small"), NULL, NULL);
    ok(host_jwt_set_jwks(jwks, strlen(jwks), err, sizeof(err)) == -1,
       "set_jwks: RSA-1024 key refused (%s)", err);
    jwks = jwks_of(ec_jwk(ec, "dup"), ec_jwk(ec2, "dup"), NULL);
    ok(host_jwt_set_jwks(jwks, strlen(jwks), err, sizeof(err)) == -1,
       "set_jwks: duplicate kid refused");
    t = tok_pkey("{\"alg\":\"ES256\",\"kid\":\"ec-1\"}", pay, ec, 0);
    ok(lsupa(t) == NULL, "set_jwks: failed updates keep the previous key set");

    /* Two ES256 keys and a token without kid: ambiguous, refused. */
    jwks = jwks_of(ec_jwk(ec, "a"), ec_jwk(ec2, "b"), NULL);
    ok(host_jwt_set_jwks(jwks, strlen(jwks), err, sizeof(err)) == 0, "set_jwks: rotation set");
    t = tok_pkey("{\"alg\":\"ES256\"}", pay, ec, 0);
    ok(streq(lsupa(t), "Unknown signing key"), "JWKS: no kid and two ES256 keys -> refused");
    t = tok_pkey("{\"alg\":\"ES256\",\"kid\":\"b\"}", pay, ec2, 0);
    ok(lsupa(t) == NULL, "JWKS: rotated key selected by kid");

    /* Swap the set while four threads verify through the global lock. */
    {
        pthread_t th[4];
        struct worker w[4];
        int failures = 0, swaps_ok = 1;
        t = tok_pkey("{\"alg\":\"ES256\",\"kid\":\"a\"}", pay, ec, 0);
        for (int i = 0; i < 4; i++) {
            w[i].token = t;
            w[i].failures = 0;
            pthread_create(&th[i], NULL, worker_main, &w[i]);
        }
        for (int i = 0; i < 20; i++)
            swaps_ok &= host_jwt_set_jwks(jwks, strlen(jwks), err, sizeof(err)) == 0;
        for (int i = 0; i < 4; i++) {
            pthread_join(th[i], NULL);
            failures += w[i].failures;
        }
        ok(swaps_ok && failures == 0, "JWKS swapped 20 times during 160 concurrent verifications");
    }

    {
        char *jwk = ec_jwk(ec, "x");
        json_t *j = json_loads(jwk, 0, NULL);
        jwtv_key *k = jwtv_key_from_jwk(j, err, sizeof(err));
        ok(k != NULL && jwtv_key_alg(k) == JWTV_ALG_ES256 && streq(jwtv_key_kid(k), "x"),
           "jwtv_key_from_jwk: EC JWK -> ES256 key with kid");
        t = tok_pkey("{\"alg\":\"RS256\"}", pay, rsa, 0);
        ok(k != NULL && jwtv_verify(t, strlen(t), k, now, NULL) == JWTV_ERR_ALG,
           "single EC key: RS256 token -> JWTV_ERR_ALG");
        jwtv_key_free(k);
        json_decref(j);
        j = json_loads("{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}", 0, NULL);
        ok(jwtv_key_from_jwk(j, err, sizeof(err)) == NULL, "jwtv_key_from_jwk: oct refused");
        json_decref(j);
    }

    EVP_PKEY_free(ec);
    EVP_PKEY_free(ec2);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(rsa_small);
}

int main(void)
{
    L = luaL_newstate();
    luaL_openlibs(L);
    host_open_jwt(L);
    lua_setglobal(L, "jwt");

    test_base64url();
    test_unconfigured();
    test_issue_roundtrip();
    test_claims();
    test_header_and_alg();
    test_pyjwt_interop();
    test_supabase_hs256();
    test_hs256_prepared_mac();
    test_jwks();

    lua_close(L);
    host_jwt_shutdown();
    for (size_t i = 0; i < n_owned; i++)
        free(owned[i]);
    return tap_done();
}
