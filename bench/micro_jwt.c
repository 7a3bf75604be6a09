/*
 * Single-threaded micro-benchmark of HS256 verification (host/src/jwt_verify.c): CPU time
 * per call of jwtv_verify() on an access token like the host issues, and of the HMAC
 * alone done three ways (one-shot HMAC(), which is what jwt_verify.c used to call; a
 * duplicate of a prepared EVP_MAC_CTX, which is what it calls now; a context reset and
 * reused by one thread, for reference).
 *
 *   make -s all && gcc -O2 -std=gnu11 -Ihost/include -o build/bench/micro_jwt \
 *       bench/micro_jwt.c host/src/jwt_verify.c -ljansson -lcrypto && build/bench/micro_jwt
 *
 * (mkdir -p build/bench first.) ITER=<n> sets the calls per round (default 200000);
 * each row prints the median and the best of 7 rounds.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/params.h>

#include "host/jwt_verify.h"
#include "../tests/support/b64url.h"

#define ROUNDS 7
#define SECRET "bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz"

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

enum which { VERIFY, HMAC_ONESHOT, MAC_DUP, MAC_REUSE };

struct ctx {
    const char *token;
    size_t len, inlen;
    jwtv_key *key;
    EVP_MAC_CTX *prepared, *reused;
    long long now;
};

static int run(const struct ctx *c, enum which w)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int ml = 0;
    size_t sl = 0;
    EVP_MAC_CTX *d;

    switch (w) {
    case VERIFY:
        return jwtv_verify(c->token, c->len, c->key, c->now, NULL) == JWTV_OK;
    case HMAC_ONESHOT:
        return HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (const unsigned char *)c->token,
                    c->inlen, mac, &ml) != NULL;
    case MAC_DUP:
        d = EVP_MAC_CTX_dup(c->prepared);
        sl = d != NULL && EVP_MAC_update(d, (const unsigned char *)c->token, c->inlen) == 1 &&
             EVP_MAC_final(d, mac, &sl, sizeof(mac)) == 1;
        EVP_MAC_CTX_free(d);
        return (int)sl;
    case MAC_REUSE:
        return EVP_MAC_init(c->reused, NULL, 0, NULL) == 1 &&
               EVP_MAC_update(c->reused, (const unsigned char *)c->token, c->inlen) == 1 &&
               EVP_MAC_final(c->reused, mac, &sl, sizeof(mac)) == 1;
    }
    return 0;
}

static void bench(const char *name, const struct ctx *c, enum which w, long iter)
{
    double r[ROUNDS];

    for (long i = 0; i < iter / 10; i++)
        if (!run(c, w)) {
            fprintf(stderr, "%s failed\n", name);
            exit(1);
        }
    for (int k = 0; k < ROUNDS; k++) {
        double t0 = cpu_now();
        for (long i = 0; i < iter; i++)
            run(c, w);
        r[k] = (cpu_now() - t0) / (double)iter * 1e6;
    }
    qsort(r, ROUNDS, sizeof(r[0]), cmp_double);
    printf("%-34s %7.3f µs  (best %.3f)\n", name, r[ROUNDS / 2], r[0]);
}

int main(void)
{
    const char *env = getenv("ITER");
    long iter = env != NULL ? atol(env) : 200000;
    struct ctx c = {0};
    char payload[256], *h, *p, *input, *sig, *token;
    unsigned char mac[32];
    unsigned int ml = 0;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);

    /* The shape of the host's access tokens (l_jwt.c issue_token, libjwt's header). */
    c.now = (long long)time(NULL);
    snprintf(payload, sizeof(payload),
             "{\"exp\":%lld,\"iat\":%lld,\"type\":\"access\","
             "\"user_id\":\"0b6f5c1e-8a1d-4c3e-9f2a-3d4e5f60718a\"}",
             c.now + 3600, c.now);
    h = b64url((const unsigned char *)"{\"alg\":\"HS256\",\"typ\":\"JWT\"}", 27);
    p = b64url((const unsigned char *)payload, strlen(payload));
    input = malloc(strlen(h) + strlen(p) + 2);
    sprintf(input, "%s.%s", h, p);
    HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (const unsigned char *)input, strlen(input),
         mac, &ml);
    sig = b64url(mac, ml);
    token = malloc(strlen(input) + strlen(sig) + 2);
    sprintf(token, "%s.%s", input, sig);

    c.token = token;
    c.len = strlen(token);
    c.inlen = strlen(input);
    c.key = jwtv_key_hs256((const unsigned char *)SECRET, strlen(SECRET));
    c.prepared = EVP_MAC_CTX_new(m);
    if (c.key == NULL || c.prepared == NULL ||
        EVP_MAC_init(c.prepared, (const unsigned char *)SECRET, strlen(SECRET), params) != 1 ||
        (c.reused = EVP_MAC_CTX_dup(c.prepared)) == NULL) {
        fprintf(stderr, "set-up failed\n");
        return 1;
    }
    printf("token %zu bytes, %ld calls x %d rounds\n", c.len, iter, ROUNDS);
    bench("jwtv_verify (HS256, whole token)", &c, VERIFY, iter);
    bench("HMAC() one-shot", &c, HMAC_ONESHOT, iter);
    bench("EVP_MAC_CTX_dup of a prepared ctx", &c, MAC_DUP, iter);
    bench("EVP_MAC_init(NULL key) reuse", &c, MAC_REUSE, iter);

    EVP_MAC_CTX_free(c.prepared);
    EVP_MAC_CTX_free(c.reused);
    EVP_MAC_free(m);
    jwtv_key_free(c.key);
    free(h);
    free(p);
    free(input);
    free(sig);
    free(token);
    return 0;
}
