/*
 * Strict JWS verifier on OpenSSL 3.0 + jansson. See host/jwt_verify.h for the contract.
 *
 * Order of work in jwtv_verify*(): cheap structural checks first (length, three
 * segments, strict base64url), then the header, then key selection and the alg pin,
 * then the signature, and only then is the payload parsed as JSON. An unauthenticated
 * payload therefore never reaches the JSON parser.
 */
#include "host/jwt_verify.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/params.h>

/* 9999-12-31T23:59:59Z: larger NumericDates are nonsense (and 1e300 must not pass). */
#define JWTV_MAX_NUMERIC_DATE INT64_C(253402300799)

#define HS256_MAC_LEN 32
#define ES256_COORD_LEN 32
#define ES256_SIG_LEN 64
#define RSA_MIN_BITS 2048
#define RSA_MAX_BITS 8192
#define RSA_MAX_BYTES (RSA_MAX_BITS / 8)
#define JWK_MAX_KID_LEN 256

struct jwtv_key {
    jwtv_alg alg;
    char *kid; /* NULL when the JWK had none */
    /*
     * HS256 only: HMAC-SHA256 keyed with the secret, prepared once (see jwtv_key_hs256()).
     * Never updated or finalised: each verification works on its own EVP_MAC_CTX_dup().
     */
    EVP_MAC_CTX *hmac;
    EVP_PKEY *pkey; /* ES256 / RS256 only */
};

struct jwtv_keyset {
    size_t n;
    jwtv_key *keys[JWTV_MAX_JWKS_KEYS];
};

static void set_err(char *err, size_t errlen, const char *msg)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s", msg);
}

/* strdup() is POSIX, not C11. */
static char *dup_string(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);

    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

/* ---- base64url ------------------------------------------------------------------------- */

static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

int jwtv_b64url_decode(const char *in, size_t inlen, unsigned char *out, size_t *outlen)
{
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t o = 0;

    /* 4k+1 characters cannot come from any byte string. */
    if (in == NULL || out == NULL || outlen == NULL || inlen % 4 == 1)
        return -1;
    for (size_t i = 0; i < inlen; i++) {
        int v = b64url_value((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    /* Non-zero leftover bits would give one byte string several encodings. */
    if (bits > 0 && acc != 0)
        return -1;
    *outlen = o;
    return 0;
}

/* ---- keys ------------------------------------------------------------------------------ */

/*
 * The HMAC is prepared here, once per key, instead of with HMAC() per verification: on
 * OpenSSL 3, HMAC() (EVP_Q_mac) fetches the HMAC and SHA-256 implementations by name
 * from the provider store, under its lock, then keys a fresh context (hashes the padded
 * key twice) on every call. A verification now duplicates this keyed context, which
 * copies the SHA-256 states and fetches nothing (about 1.25 -> 0.6 µs per HMAC here,
 * bench/micro_jwt.c).
 *
 * Threads: verifications run concurrently on every worker thread with the same key.
 * They only pass `hmac` to EVP_MAC_CTX_dup(), which takes it as const: it reads the
 * context (the provider's hmac_dup copies the struct, HMAC_CTX_copy copies the three
 * digest states) and takes references on the fetched algorithms with atomic
 * increments. Nothing writes `hmac` between here and jwtv_key_free(), and keys are
 * freed only when no verifier uses them (host/jwt_verify.h). Update and final, which
 * do write, happen on the per-call copy. A per-thread context reset with
 * EVP_MAC_init(ctx, NULL, ...) would save another ~0.3 µs, but needs thread-local
 * state tied to a key's lifetime; not worth it.
 */
jwtv_key *jwtv_key_hs256(const unsigned char *secret, size_t len)
{
    jwtv_key *key = NULL;
    EVP_MAC *mac = NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };

    /* A secretless HMAC verifier is exactly libjwt's key==NULL hole: refuse to build one. */
    if (secret == NULL || len == 0 || len > INT_MAX)
        return NULL;
    key = calloc(1, sizeof(*key));
    if (key == NULL)
        return NULL;
    key->alg = JWTV_ALG_HS256;
    mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    key->hmac = mac != NULL ? EVP_MAC_CTX_new(mac) : NULL;
    EVP_MAC_free(mac); /* the context holds its own reference */
    if (key->hmac == NULL || EVP_MAC_init(key->hmac, secret, len, params) != 1) {
        jwtv_key_free(key);
        key = NULL;
    }
    ERR_clear_error();
    return key;
}

void jwtv_key_free(jwtv_key *key)
{
    if (key == NULL)
        return;
    EVP_MAC_CTX_free(key->hmac); /* the provider cleanses its copy of the secret */
    EVP_PKEY_free(key->pkey);
    free(key->kid);
    free(key);
}

jwtv_alg jwtv_key_alg(const jwtv_key *key)
{
    return key->alg;
}

const char *jwtv_key_kid(const jwtv_key *key)
{
    return key->kid;
}

/* Decodes a base64url JWK member into `out` (capacity `cap`). -1 if absent or invalid. */
static int jwk_member_b64(const json_t *jwk, const char *name, unsigned char *out, size_t cap,
                          size_t *outlen)
{
    const json_t *v = json_object_get(jwk, name);
    size_t slen;

    if (!json_is_string(v))
        return -1;
    slen = json_string_length(v);
    if (slen == 0 || JWTV_B64_DECODED_MAX(slen) > cap)
        return -1;
    return jwtv_b64url_decode(json_string_value(v), slen, out, outlen);
}

/*
 * Builds a public EVP_PKEY from provider parameters and runs OpenSSL's public-key
 * check, so an off-curve EC point or a nonsensical RSA modulus fails at load time
 * rather than producing a key that "verifies" attacker-chosen signatures.
 */
static EVP_PKEY *pkey_from_params(const char *type, OSSL_PARAM_BLD *bld)
{
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL, *check = NULL;
    EVP_PKEY *pkey = NULL;

    params = OSSL_PARAM_BLD_to_param(bld);
    if (params == NULL)
        goto cleanup;
    ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1) {
        pkey = NULL;
        goto cleanup;
    }
    check = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    if (check == NULL || EVP_PKEY_public_check(check) != 1) {
        EVP_PKEY_free(pkey);
        pkey = NULL;
    }

cleanup:
    EVP_PKEY_CTX_free(check);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    ERR_clear_error();
    return pkey;
}

static EVP_PKEY *ec_p256_from_jwk(const json_t *jwk, char *err, size_t errlen)
{
    unsigned char x[JWTV_B64_DECODED_MAX(64)], y[JWTV_B64_DECODED_MAX(64)];
    unsigned char point[1 + 2 * ES256_COORD_LEN];
    size_t xlen = 0, ylen = 0;
    OSSL_PARAM_BLD *bld = NULL;
    EVP_PKEY *pkey = NULL;

    if (jwk_member_b64(jwk, "x", x, sizeof(x), &xlen) != 0 || xlen != ES256_COORD_LEN ||
        jwk_member_b64(jwk, "y", y, sizeof(y), &ylen) != 0 || ylen != ES256_COORD_LEN) {
        set_err(err, errlen, "EC JWK needs 32-byte base64url x and y");
        goto cleanup;
    }
    /* SEC1 uncompressed point: 0x04 || x || y. */
    point[0] = 0x04;
    memcpy(point + 1, x, ES256_COORD_LEN);
    memcpy(point + 1 + ES256_COORD_LEN, y, ES256_COORD_LEN);

    bld = OSSL_PARAM_BLD_new();
    if (bld == NULL ||
        !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof(point))) {
        set_err(err, errlen, "out of memory building EC key");
        goto cleanup;
    }
    pkey = pkey_from_params("EC", bld);
    if (pkey == NULL)
        set_err(err, errlen, "EC JWK is not a valid P-256 public key");

cleanup:
    OSSL_PARAM_BLD_free(bld);
    return pkey;
}

static EVP_PKEY *rsa_from_jwk(const json_t *jwk, char *err, size_t errlen)
{
    unsigned char n[JWTV_B64_DECODED_MAX(1368)], e[16];
    size_t nlen = 0, elen = 0;
    BIGNUM *bn_n = NULL, *bn_e = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    EVP_PKEY *pkey = NULL;
    int bits;

    if (jwk_member_b64(jwk, "n", n, sizeof(n), &nlen) != 0 ||
        jwk_member_b64(jwk, "e", e, sizeof(e), &elen) != 0 || elen == 0 || elen > 8) {
        set_err(err, errlen, "RSA JWK needs base64url n (at most 8192 bits) and e");
        goto cleanup;
    }
    bn_n = BN_bin2bn(n, (int)nlen, NULL);
    bn_e = BN_bin2bn(e, (int)elen, NULL);
    bld = OSSL_PARAM_BLD_new();
    if (bn_n == NULL || bn_e == NULL || bld == NULL ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e)) {
        set_err(err, errlen, "out of memory building RSA key");
        goto cleanup;
    }
    /* Size is checked on the big number so a 16-bit modulus never reaches the provider. */
    bits = BN_num_bits(bn_n);
    if (bits < RSA_MIN_BITS || bits > RSA_MAX_BITS) {
        set_err(err, errlen, "RSA JWK modulus must be 2048..8192 bits");
        goto cleanup;
    }
    pkey = pkey_from_params("RSA", bld);
    if (pkey == NULL)
        set_err(err, errlen, "RSA JWK is not a valid public key");

cleanup:
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn_n);
    BN_free(bn_e);
    ERR_clear_error();
    return pkey;
}

/*
 * Imports one JWK. Returns 1 with `*out` set, 0 when the key is of a kind this
 * verifier does not use (skip it), -1 when a supported key is broken.
 */
static int jwk_import(const json_t *jwk, jwtv_key **out, char *err, size_t errlen)
{
    const json_t *kty, *use, *alg, *kid;
    const char *kty_s, *alg_s = NULL;
    jwtv_key *key = NULL;
    EVP_PKEY *pkey = NULL;
    jwtv_alg which;

    *out = NULL;
    if (!json_is_object(jwk)) {
        set_err(err, errlen, "JWK is not an object");
        return -1;
    }
    kty = json_object_get(jwk, "kty");
    if (!json_is_string(kty)) {
        set_err(err, errlen, "JWK has no string kty");
        return -1;
    }
    kty_s = json_string_value(kty);
    use = json_object_get(jwk, "use");
    if (use != NULL && !(json_is_string(use) && strcmp(json_string_value(use), "sig") == 0))
        return 0; /* encryption keys must not verify signatures */
    alg = json_object_get(jwk, "alg");
    if (alg != NULL) {
        if (!json_is_string(alg)) {
            set_err(err, errlen, "JWK alg is not a string");
            return -1;
        }
        alg_s = json_string_value(alg);
    }
    kid = json_object_get(jwk, "kid");
    if (kid != NULL && (!json_is_string(kid) || json_string_length(kid) == 0 ||
                        json_string_length(kid) > JWK_MAX_KID_LEN)) {
        set_err(err, errlen, "JWK kid must be a non-empty string of at most 256 bytes");
        return -1;
    }

    if (strcmp(kty_s, "EC") == 0) {
        const json_t *crv = json_object_get(jwk, "crv");
        if (!json_is_string(crv) || strcmp(json_string_value(crv), "P-256") != 0)
            return 0;
        if (alg_s != NULL && strcmp(alg_s, "ES256") != 0)
            return 0;
        which = JWTV_ALG_ES256;
        pkey = ec_p256_from_jwk(jwk, err, errlen);
    } else if (strcmp(kty_s, "RSA") == 0) {
        if (alg_s != NULL && strcmp(alg_s, "RS256") != 0)
            return 0;
        which = JWTV_ALG_RS256;
        pkey = rsa_from_jwk(jwk, err, errlen);
    } else {
        /* `oct` (a secret in a public document), OKP, ...: never used here. */
        return 0;
    }
    if (pkey == NULL)
        return -1;

    key = calloc(1, sizeof(*key));
    if (key == NULL || (kid != NULL && (key->kid = dup_string(json_string_value(kid))) == NULL)) {
        set_err(err, errlen, "out of memory");
        free(key);
        EVP_PKEY_free(pkey);
        return -1;
    }
    key->alg = which;
    key->pkey = pkey;
    *out = key;
    return 1;
}

jwtv_key *jwtv_key_from_jwk(const json_t *jwk, char *err, size_t errlen)
{
    jwtv_key *key = NULL;
    int rc = jwk_import(jwk, &key, err, errlen);

    if (rc == 0)
        set_err(err, errlen, "unsupported JWK (only EC P-256/ES256 and RSA/RS256 signing keys)");
    return rc == 1 ? key : NULL;
}

jwtv_keyset *jwtv_keyset_from_json(const char *json, size_t len, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root = NULL;
    const json_t *keys, *jwk;
    jwtv_keyset *ks = NULL;
    char why[160];
    size_t i;

    if (json == NULL || len == 0 || len > JWTV_MAX_JWKS_LEN) {
        set_err(err, errlen, "JWKS must be 1..65536 bytes of JSON");
        goto fail;
    }
    root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    keys = json_object_get(root, "keys");
    if (!json_is_array(keys)) {
        set_err(err, errlen, "JWKS must be a JSON object with a \"keys\" array");
        goto fail;
    }
    if (json_array_size(keys) > JWTV_MAX_JWKS_KEYS) {
        set_err(err, errlen, "JWKS has more than 32 keys");
        goto fail;
    }
    ks = calloc(1, sizeof(*ks));
    if (ks == NULL) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    json_array_foreach(keys, i, jwk) {
        jwtv_key *key = NULL;
        int rc = jwk_import(jwk, &key, why, sizeof(why));

        if (rc < 0) {
            if (err != NULL && errlen > 0)
                snprintf(err, errlen, "JWKS key %zu: %s", i, why);
            goto fail;
        }
        if (rc == 0)
            continue;
        /* Two keys with one kid would make the lookup depend on document order. */
        for (size_t j = 0; key->kid != NULL && j < ks->n; j++) {
            if (ks->keys[j]->kid != NULL && strcmp(ks->keys[j]->kid, key->kid) == 0) {
                jwtv_key_free(key);
                set_err(err, errlen, "JWKS has duplicate kid");
                goto fail;
            }
        }
        ks->keys[ks->n++] = key;
    }
    if (ks->n == 0) {
        set_err(err, errlen, "JWKS has no usable ES256 (EC P-256) or RS256 (RSA) signing key");
        goto fail;
    }
    json_decref(root);
    return ks;

fail:
    jwtv_keyset_free(ks);
    json_decref(root);
    return NULL;
}

size_t jwtv_keyset_size(const jwtv_keyset *ks)
{
    return ks == NULL ? 0 : ks->n;
}

void jwtv_keyset_free(jwtv_keyset *ks)
{
    if (ks == NULL)
        return;
    for (size_t i = 0; i < ks->n; i++)
        jwtv_key_free(ks->keys[i]);
    free(ks);
}

/* ---- signatures ------------------------------------------------------------------------ */

static jwtv_status verify_hs256(const jwtv_key *key, const unsigned char *in, size_t inlen,
                                const unsigned char *sig, size_t siglen)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    size_t maclen = 0;
    EVP_MAC_CTX *ctx = NULL;
    jwtv_status st = JWTV_ERR_SIGNATURE;

    if (siglen != HS256_MAC_LEN)
        goto cleanup;
    /* A private copy of the keyed context: the shared one is only ever read. */
    ctx = EVP_MAC_CTX_dup(key->hmac);
    if (ctx == NULL || EVP_MAC_update(ctx, in, inlen) != 1 ||
        EVP_MAC_final(ctx, mac, &maclen, sizeof(mac)) != 1 || maclen != HS256_MAC_LEN) {
        st = JWTV_ERR_INTERNAL;
        goto cleanup;
    }
    /* Raw MACs compared in constant time (libjwt 1.10.2 used strcmp on base64 text). */
    st = CRYPTO_memcmp(mac, sig, HS256_MAC_LEN) == 0 ? JWTV_OK : JWTV_ERR_SIGNATURE;

cleanup:
    EVP_MAC_CTX_free(ctx);
    OPENSSL_cleanse(mac, sizeof(mac));
    ERR_clear_error();
    return st;
}

static jwtv_status digest_verify(EVP_PKEY *pkey, const unsigned char *sig, size_t siglen,
                                 const unsigned char *in, size_t inlen)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    jwtv_status st = JWTV_ERR_INTERNAL;

    if (ctx == NULL || EVP_DigestVerifyInit_ex(ctx, NULL, "SHA256", NULL, NULL, pkey, NULL) != 1)
        goto cleanup;
    st = EVP_DigestVerify(ctx, sig, siglen, in, inlen) == 1 ? JWTV_OK : JWTV_ERR_SIGNATURE;

cleanup:
    EVP_MD_CTX_free(ctx);
    /* Failed verifications queue errors on this thread; do not let them pile up. */
    ERR_clear_error();
    return st;
}

/* JWS carries ECDSA as fixed-width r||s (RFC 7518 §3.4); OpenSSL wants DER. */
static jwtv_status verify_es256(const jwtv_key *key, const unsigned char *in, size_t inlen,
                                const unsigned char *sig, size_t siglen)
{
    ECDSA_SIG *esig = NULL;
    BIGNUM *r = NULL, *s = NULL;
    unsigned char *der = NULL;
    int derlen;
    jwtv_status st = JWTV_ERR_SIGNATURE;

    if (siglen != ES256_SIG_LEN)
        goto cleanup;
    st = JWTV_ERR_INTERNAL;
    esig = ECDSA_SIG_new();
    r = BN_bin2bn(sig, ES256_COORD_LEN, NULL);
    s = BN_bin2bn(sig + ES256_COORD_LEN, ES256_COORD_LEN, NULL);
    if (esig == NULL || r == NULL || s == NULL || !ECDSA_SIG_set0(esig, r, s))
        goto cleanup;
    r = s = NULL; /* owned by esig now */
    derlen = i2d_ECDSA_SIG(esig, &der);
    if (derlen <= 0)
        goto cleanup;
    st = digest_verify(key->pkey, der, (size_t)derlen, in, inlen);

cleanup:
    OPENSSL_free(der);
    ECDSA_SIG_free(esig);
    BN_free(r);
    BN_free(s);
    ERR_clear_error();
    return st;
}

static jwtv_status verify_rs256(const jwtv_key *key, const unsigned char *in, size_t inlen,
                                const unsigned char *sig, size_t siglen)
{
    int size = EVP_PKEY_get_size(key->pkey);

    /* PKCS#1 v1.5 signatures are exactly the modulus length. */
    if (size <= 0 || siglen != (size_t)size)
        return JWTV_ERR_SIGNATURE;
    return digest_verify(key->pkey, sig, siglen, in, inlen);
}

static jwtv_status verify_signature(const jwtv_key *key, const unsigned char *in, size_t inlen,
                                    const unsigned char *sig, size_t siglen)
{
    switch (key->alg) {
    case JWTV_ALG_HS256:
        return verify_hs256(key, in, inlen, sig, siglen);
    case JWTV_ALG_ES256:
        return verify_es256(key, in, inlen, sig, siglen);
    case JWTV_ALG_RS256:
        return verify_rs256(key, in, inlen, sig, siglen);
    }
    return JWTV_ERR_INTERNAL;
}

/* ---- token ----------------------------------------------------------------------------- */

static jwtv_alg alg_from_name(const char *name)
{
    /* Exact, case-sensitive names (RFC 7518); everything else, `none` included, is 0. */
    if (strcmp(name, "HS256") == 0)
        return JWTV_ALG_HS256;
    if (strcmp(name, "ES256") == 0)
        return JWTV_ALG_ES256;
    if (strcmp(name, "RS256") == 0)
        return JWTV_ALG_RS256;
    return (jwtv_alg)0;
}

static int ascii_ieq(const char *a, const char *b)
{
    for (; *a != '\0' && *b != '\0'; a++, b++) {
        char ca = (*a >= 'A' && *a <= 'Z') ? (char)(*a + 32) : *a;
        char cb = (*b >= 'A' && *b <= 'Z') ? (char)(*b + 32) : *b;
        if (ca != cb)
            return 0;
    }
    return *a == *b;
}

/* A NumericDate we accept: a JSON integer, or a real with an integral value, in range. */
static int numeric_date(const json_t *v, int64_t *out)
{
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        if (i < 0 || i > JWTV_MAX_NUMERIC_DATE)
            return -1;
        *out = (int64_t)i;
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        int64_t i;
        /* The range test also rejects NaN, so the cast below is defined. */
        if (!(d >= 0.0 && d <= (double)JWTV_MAX_NUMERIC_DATE))
            return -1;
        i = (int64_t)d;
        if ((double)i != d)
            return -1;
        *out = i;
        return 0;
    }
    return -1;
}

static jwtv_status check_time_claims(const json_t *payload, int64_t now)
{
    const json_t *exp_v = json_object_get(payload, "exp");
    const json_t *nbf_v = json_object_get(payload, "nbf");
    const json_t *iat_v = json_object_get(payload, "iat");
    int64_t exp = 0, nbf = 0, iat = 0;

    if (exp_v == NULL || numeric_date(exp_v, &exp) != 0)
        return JWTV_ERR_CLAIMS;
    if (nbf_v != NULL && numeric_date(nbf_v, &nbf) != 0)
        return JWTV_ERR_CLAIMS;
    if (iat_v != NULL && numeric_date(iat_v, &iat) != 0)
        return JWTV_ERR_CLAIMS;
    /* Claims are bounded above, so adding or subtracting the leeway cannot overflow. */
    if (now > exp + JWTV_LEEWAY_S)
        return JWTV_ERR_EXPIRED;
    if (nbf_v != NULL && now < nbf - JWTV_LEEWAY_S)
        return JWTV_ERR_NOT_YET_VALID;
    if (iat_v != NULL && now < iat - JWTV_LEEWAY_S)
        return JWTV_ERR_NOT_YET_VALID;
    return JWTV_OK;
}

/* Picks the key for a token from a key set (see jwtv_verify_keyset()). */
static jwtv_status select_key(const jwtv_keyset *ks, const json_t *kid, jwtv_alg alg,
                              const jwtv_key **out)
{
    const jwtv_key *found = NULL;

    if (kid != NULL) {
        for (size_t i = 0; i < ks->n; i++) {
            if (ks->keys[i]->kid != NULL && strcmp(ks->keys[i]->kid, json_string_value(kid)) == 0)
                found = ks->keys[i];
        }
        if (found == NULL)
            return JWTV_ERR_KEY_UNKNOWN;
    } else {
        size_t matches = 0;
        for (size_t i = 0; i < ks->n; i++) {
            if (ks->keys[i]->alg == alg) {
                found = ks->keys[i];
                matches++;
            }
        }
        if (matches == 0)
            return JWTV_ERR_ALG;
        if (matches > 1)
            return JWTV_ERR_KEY_UNKNOWN;
    }
    *out = found;
    return JWTV_OK;
}

/* Exactly one of `single` and `ks` is consulted: `ks` when `use_set` is non-zero. */
static jwtv_status verify_token(const char *token, size_t len, const jwtv_key *single,
                                const jwtv_keyset *ks, int use_set, int64_t now, json_t **claims)
{
    /* Decoded segments never exceed 3/4 of the token plus slack, so one buffer holds all. */
    unsigned char buf[JWTV_MAX_TOKEN_LEN];
    unsigned char *hdr, *pay, *sig;
    size_t hlen = 0, plen = 0, slen = 0;
    const char *d1, *d2, *end;
    json_error_t jerr;
    json_t *header = NULL, *payload = NULL;
    const json_t *alg_v, *typ_v, *kid_v;
    const jwtv_key *key = NULL;
    jwtv_alg alg;
    jwtv_status st = JWTV_ERR_NO_KEY;

    if (claims != NULL)
        *claims = NULL;
    if (use_set ? jwtv_keyset_size(ks) == 0 : single == NULL)
        goto cleanup;

    st = JWTV_ERR_MALFORMED;
    if (token == NULL || len == 0 || len > JWTV_MAX_TOKEN_LEN)
        goto cleanup;
    end = token + len;
    d1 = memchr(token, '.', len);
    d2 = d1 == NULL ? NULL : memchr(d1 + 1, '.', (size_t)(end - d1 - 1));
    if (d2 == NULL || memchr(d2 + 1, '.', (size_t)(end - d2 - 1)) != NULL)
        goto cleanup;
    if (d1 == token || d2 == d1 + 1 || d2 + 1 == end)
        goto cleanup; /* empty header, payload or signature */

    hdr = buf;
    if (jwtv_b64url_decode(token, (size_t)(d1 - token), hdr, &hlen) != 0)
        goto cleanup;
    pay = hdr + hlen;
    if (jwtv_b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), pay, &plen) != 0)
        goto cleanup;
    sig = pay + plen;
    if (jwtv_b64url_decode(d2 + 1, (size_t)(end - d2 - 1), sig, &slen) != 0)
        goto cleanup;

    header = json_loadb((const char *)hdr, hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(header))
        goto cleanup;
    /* We implement no header extensions, so anything marked critical must be refused. */
    if (json_object_get(header, "crit") != NULL)
        goto cleanup;
    typ_v = json_object_get(header, "typ");
    if (typ_v != NULL && !(json_is_string(typ_v) && ascii_ieq(json_string_value(typ_v), "JWT")))
        goto cleanup;
    kid_v = json_object_get(header, "kid");
    if (kid_v != NULL && !json_is_string(kid_v))
        goto cleanup;
    /* jku, x5u, jwk and friends are ignored: keys come only from our configuration. */

    st = JWTV_ERR_ALG;
    alg_v = json_object_get(header, "alg");
    if (!json_is_string(alg_v))
        goto cleanup;
    alg = alg_from_name(json_string_value(alg_v));
    if (alg == 0)
        goto cleanup;
    if (use_set) {
        st = select_key(ks, kid_v, alg, &key);
        if (st != JWTV_OK)
            goto cleanup;
    } else {
        key = single;
    }
    /* The pin: the key decides the algorithm, the token only has to agree. */
    st = JWTV_ERR_ALG;
    if (key->alg != alg)
        goto cleanup;

    st = verify_signature(key, (const unsigned char *)token, (size_t)(d2 - token), sig, slen);
    if (st != JWTV_OK)
        goto cleanup;

    st = JWTV_ERR_MALFORMED;
    payload = json_loadb((const char *)pay, plen, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(payload))
        goto cleanup;
    st = check_time_claims(payload, now);
    if (st == JWTV_OK && claims != NULL) {
        *claims = payload;
        payload = NULL;
    }

cleanup:
    json_decref(header);
    json_decref(payload);
    return st;
}

jwtv_status jwtv_verify(const char *token, size_t len, const jwtv_key *key, int64_t now,
                        json_t **claims)
{
    return verify_token(token, len, key, NULL, 0, now, claims);
}

jwtv_status jwtv_verify_keyset(const char *token, size_t len, const jwtv_keyset *ks, int64_t now,
                               json_t **claims)
{
    return verify_token(token, len, NULL, ks, 1, now, claims);
}

const char *jwtv_status_message(jwtv_status st)
{
    switch (st) {
    case JWTV_OK:
        return "OK";
    case JWTV_ERR_MALFORMED:
    case JWTV_ERR_CLAIMS:
        return "Invalid token";
    case JWTV_ERR_ALG:
        return "Algorithm not allowed";
    case JWTV_ERR_KEY_UNKNOWN:
        return "Unknown signing key";
    case JWTV_ERR_NO_KEY:
        return "No verification key configured";
    case JWTV_ERR_SIGNATURE:
        return "Signature verification failed";
    case JWTV_ERR_EXPIRED:
        return "Token has expired";
    case JWTV_ERR_NOT_YET_VALID:
        return "Token is not yet valid";
    case JWTV_ERR_INTERNAL:
        return "Internal error";
    }
    return "Invalid token";
}
