/*
 * Strict JWS verification for the host (pure C, no Lua, no globals).
 *
 * Debian 12's libjwt 1.10.2 is kept out of the trust path: it compares HMACs with
 * strcmp, takes the algorithm from the token, accepts any token when the key is NULL
 * and validates no claims. This module is the narrow replacement, built on OpenSSL 3.0
 * EVP and jansson:
 *
 *   - three algorithms only: HS256, ES256 (JOSE r||s signatures) and RS256;
 *   - the algorithm is pinned by the verifier's key; the token's `alg` must equal it;
 *   - strict compact form: exactly three segments, base64url without padding or stray
 *     characters (canonical trailing bits), header and payload JSON objects without
 *     duplicate keys, at most JWTV_MAX_TOKEN_LEN bytes;
 *   - `exp` is required; `exp`, `nbf` and `iat` are checked with JWTV_LEEWAY_S seconds
 *     of clock skew.
 *
 * Every function is reentrant; keys and key sets are immutable after construction, so
 * they can be shared by threads as long as the owner frees them only after all readers
 * are done. `now` is a parameter so the verifier is deterministic under a fuzzer.
 */
#ifndef HOST_JWT_VERIFY_H
#define HOST_JWT_VERIFY_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/** Longest token accepted, in bytes (parser-differential and DoS guard). */
#define JWTV_MAX_TOKEN_LEN 8192

/** Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds. */
#define JWTV_LEEWAY_S 30

/** Longest JWKS document accepted by jwtv_keyset_from_json(), in bytes. */
#define JWTV_MAX_JWKS_LEN 65536

/** Most keys kept from one JWKS document. */
#define JWTV_MAX_JWKS_KEYS 32

/** Bytes needed to hold the decoding of `n` base64url characters. */
#define JWTV_B64_DECODED_MAX(n) ((n) / 4 * 3 + 2)

/** The algorithms a key can be pinned to. There is deliberately no `none`. */
typedef enum jwtv_alg {
    JWTV_ALG_HS256 = 1,
    JWTV_ALG_ES256,
    JWTV_ALG_RS256,
} jwtv_alg;

/** Outcome of a verification. Only JWTV_OK means the claims may be trusted. */
typedef enum jwtv_status {
    JWTV_OK = 0,
    JWTV_ERR_MALFORMED,     /**< not a strict compact JWS ("Invalid token") */
    JWTV_ERR_ALG,           /**< alg missing, `none`, unknown or not the key's alg */
    JWTV_ERR_KEY_UNKNOWN,   /**< no key with the token's `kid`, or no unique key */
    JWTV_ERR_NO_KEY,        /**< the verifier has no key at all (refused, never skipped) */
    JWTV_ERR_SIGNATURE,     /**< the signature does not verify */
    JWTV_ERR_EXPIRED,       /**< now > exp + leeway */
    JWTV_ERR_NOT_YET_VALID, /**< now + leeway < nbf, or iat in the future beyond leeway */
    JWTV_ERR_CLAIMS,        /**< exp missing, or exp/nbf/iat not an integral NumericDate */
    JWTV_ERR_INTERNAL,      /**< allocation or OpenSSL failure */
} jwtv_status;

/** An immutable verification key pinned to one algorithm. */
typedef struct jwtv_key jwtv_key;

/** An immutable set of public keys, typically parsed from a JWKS document. */
typedef struct jwtv_keyset jwtv_keyset;

/**
 * Strict base64url decoding (RFC 4648 §5, no padding).
 *
 * Rejects `=`, whitespace and any character outside [A-Za-z0-9_-], lengths of the
 * form 4k+1, and non-zero unused trailing bits, so every byte string has exactly one
 * accepted encoding. `out` must hold JWTV_B64_DECODED_MAX(inlen) bytes.
 *
 * @return 0 and the decoded length in `*outlen`, or -1 on invalid input.
 */
int jwtv_b64url_decode(const char *in, size_t inlen, unsigned char *out, size_t *outlen);

/**
 * Creates an HS256 key holding a copy of `secret`.
 *
 * An empty or NULL secret yields NULL: a secretless HMAC verifier would accept tokens
 * anyone can forge, so it cannot be constructed.
 *
 * @return the key (free with jwtv_key_free()), or NULL.
 */
jwtv_key *jwtv_key_hs256(const unsigned char *secret, size_t len);

/**
 * Builds a public key from one JWK object: `kty:"EC"` with `crv:"P-256"` and `x`/`y`
 * becomes an ES256 key; `kty:"RSA"` with `n`/`e` (2048..8192 bits) becomes an RS256
 * key. `kid` is kept when present. `use` other than "sig", an `alg` that does not match
 * the key type, and symmetric (`oct`) keys are refused.
 *
 * @return the key, or NULL with a message in `err` (which may be NULL).
 */
jwtv_key *jwtv_key_from_jwk(const json_t *jwk, char *err, size_t errlen);

/** Frees a key (secrets are cleansed). NULL is allowed. */
void jwtv_key_free(jwtv_key *key);

/** The algorithm a key is pinned to. */
jwtv_alg jwtv_key_alg(const jwtv_key *key);

/** The key's `kid`, or NULL when it has none. */
const char *jwtv_key_kid(const jwtv_key *key);

/**
 * Parses a JWKS document (`{"keys":[...]}`) into a key set.
 *
 * Keys of unsupported types, curves or algorithms (for example OKP, P-384, `oct`,
 * `use:"enc"`) are skipped; a supported key with broken parameters, duplicate `kid`s,
 * more than JWTV_MAX_JWKS_KEYS keys, or a set with no usable key fails the whole set,
 * because a half-understood key set is a configuration error worth seeing.
 *
 * @return the key set (free with jwtv_keyset_free()), or NULL with a message in `err`.
 */
jwtv_keyset *jwtv_keyset_from_json(const char *json, size_t len, char *err, size_t errlen);

/** Number of usable keys in a set. */
size_t jwtv_keyset_size(const jwtv_keyset *ks);

/** Frees a key set and its keys. NULL is allowed. */
void jwtv_keyset_free(jwtv_keyset *ks);

/**
 * Verifies a compact JWS against one key (its `kid`, if any, is not consulted).
 *
 * The header `alg` must equal the key's algorithm; `typ`, if present, must be "JWT"
 * (case-insensitive); `crit` is refused. After the signature verifies, the payload must
 * be a JSON object with an integral `exp` (now <= exp + leeway) and, when present, an
 * integral `nbf` (now + leeway >= nbf) and `iat` (iat <= now + leeway).
 *
 * @param claims  on JWTV_OK receives the payload object (release with json_decref());
 *                otherwise set to NULL. May be NULL when the claims are not needed.
 */
jwtv_status jwtv_verify(const char *token, size_t len, const jwtv_key *key, int64_t now,
                        json_t **claims);

/**
 * Verifies a compact JWS against a key set: a token with `kid` uses the key with that
 * `kid` (JWTV_ERR_KEY_UNKNOWN if none); a token without `kid` uses the only key whose
 * algorithm equals the header's `alg` (JWTV_ERR_ALG if none, JWTV_ERR_KEY_UNKNOWN if
 * several). Everything else is as jwtv_verify().
 */
jwtv_status jwtv_verify_keyset(const char *token, size_t len, const jwtv_keyset *ks, int64_t now,
                               json_t **claims);

/**
 * A short message for a status, safe to show to API clients (it never contains token
 * or key material): "Invalid token", "Algorithm not allowed", "Unknown signing key",
 * "No verification key configured", "Signature verification failed",
 * "Token has expired", "Token is not yet valid", "Internal error".
 */
const char *jwtv_status_message(jwtv_status st);

#endif
