#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "host/config.h"

host_config_t host_config;

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        ++s;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

int host_config_load_dotenv(const char *path, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "r");
    if (fp == NULL)
        return errno == ENOENT ? 0 : (snprintf(err, errlen, "%s: %s", path, strerror(errno)), -1);
    char line[8192];
    int lineno = 0, rc = 0;
    while (fgets(line, sizeof(line), fp) != NULL) {
        ++lineno;
        char *s = trim(line);
        if (*s == '\0' || *s == '#')
            continue;
        if (strncmp(s, "export ", 7) == 0)
            s = trim(s + 7);
        char *eq = strchr(s, '=');
        if (eq == NULL) {
            snprintf(err, errlen, "%s:%d: expected KEY=VALUE", path, lineno);
            rc = -1;
            break;
        }
        *eq = '\0';
        char *key = trim(s), *value = trim(eq + 1);
        size_t vlen = strlen(value);
        if (vlen >= 2 && (value[0] == '"' || value[0] == '\'') && value[vlen - 1] == value[0]) {
            value[vlen - 1] = '\0';
            ++value;
        }
        if (*key == '\0') {
            snprintf(err, errlen, "%s:%d: empty key", path, lineno);
            rc = -1;
            break;
        }
        setenv(key, value, 0); /* the real environment wins over the file */
    }
    fclose(fp);
    return rc;
}

static const char *env_str(const char *name, const char *def)
{
    const char *v = getenv(name);
    return v != NULL && *v != '\0' ? v : def;
}

#define PROBLEM(...)                                                                               \
    do {                                                                                           \
        ++nproblems;                                                                               \
        if (problems != NULL) {                                                                    \
            size_t used_ = strlen(problems);                                                       \
            if (used_ < problems_len)                                                              \
                snprintf(problems + used_, problems_len - used_, __VA_ARGS__);                     \
        }                                                                                          \
    } while (0)

static long long env_int(const char *name, long long def, long long min, long long max,
                         char *problems, size_t problems_len, int *nproblems_p)
{
    int nproblems = 0;
    const char *v = getenv(name);
    long long result = def;
    if (v != NULL && *v != '\0') {
        char *end;
        errno = 0;
        long long n = strtoll(v, &end, 10);
        if (errno != 0 || *end != '\0' || n < min || n > max)
            PROBLEM("%s must be an integer between %lld and %lld (got \"%.40s\")\n", name, min, max,
                    v);
        else
            result = n;
    }
    *nproblems_p += nproblems;
    return result;
}

int host_config_read(char *problems, size_t problems_len)
{
    int nproblems = 0;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (problems != NULL && problems_len > 0)
        problems[0] = '\0';
    host_config_t *c = &host_config;
    c->host = env_str("HOST", "127.0.0.1");
    c->port = (int)env_int("PORT", 8000, 0, 65535, problems, problems_len, &nproblems);
    c->workers =
        (int)env_int("WORKERS", ncpu > 0 ? ncpu : 1, 1, 256, problems, problems_len, &nproblems);
    c->tls_cert = env_str("TLS_CERT", NULL);
    c->tls_key = env_str("TLS_KEY", NULL);
    c->data_dir = env_str("AICODE_DATA_DIR", "./data");
    c->scripts_dir = env_str("AICODE_SCRIPTS_DIR", "./scripts");
    c->lualib_dir = env_str("AICODE_LUALIB_DIR", "./lualib");
    c->db_dir = env_str("AICODE_DB_DIR", "./db");
    c->dev = strcmp(env_str("AICODE_DEV", "0"), "1") == 0;
    c->max_body = (size_t)env_int("MAX_BODY_BYTES", 1 << 20, 1024, 64 << 20, problems, problems_len,
                                  &nproblems);
    c->proxy_timeout_ms = (uint64_t)env_int("MODEL_PROXY_TIMEOUT_MS", 600000, 1000, 3600000,
                                            problems, problems_len, &nproblems);
    c->max_header_count =
        (int)env_int("MAX_HEADER_COUNT", 64, 8, 100, problems, problems_len, &nproblems);
    c->max_header_bytes =
        (size_t)env_int("MAX_HEADER_BYTES", 16384, 1024, 65536, problems, problems_len, &nproblems);
    c->request_timeout_ms = (uint64_t)env_int("REQUEST_TIMEOUT_MS", 30000, 100, 3600000, problems,
                                              problems_len, &nproblems);
    c->idle_timeout_ms = (uint64_t)env_int("IDLE_TIMEOUT_MS", 10000, 100, 3600000, problems,
                                           problems_len, &nproblems);
    c->max_connections =
        (size_t)env_int("MAX_CONNECTIONS", 4096, 1, 1000000, problems, problems_len, &nproblems);
    c->drain_timeout_ms = (uint64_t)env_int("DRAIN_TIMEOUT_MS", 20000, 0, 3600000, problems,
                                            problems_len, &nproblems);
    c->log_file = env_str("LOG_FILE", NULL);
    c->access_ttl_s = 60 * (long)env_int("JWT_ACCESS_TOKEN_EXPIRE_MINUTES", 60, 1, 1440, problems,
                                         problems_len, &nproblems);
    c->refresh_ttl_s = 86400 * (long)env_int("JWT_REFRESH_TOKEN_EXPIRE_DAYS", 7, 1, 90, problems,
                                             problems_len, &nproblems);
    if ((c->tls_cert == NULL) != (c->tls_key == NULL))
        PROBLEM("TLS_CERT and TLS_KEY must be set together\n");
    if (c->tls_cert != NULL && access(c->tls_cert, R_OK) != 0)
        PROBLEM("TLS_CERT: cannot read %s\n", c->tls_cert);
    if (c->tls_key != NULL && access(c->tls_key, R_OK) != 0)
        PROBLEM("TLS_KEY: cannot read %s\n", c->tls_key);
    const char *secret = getenv("JWT_SECRET");
    if (secret != NULL && *secret != '\0' && strlen(secret) < 32)
        PROBLEM("JWT_SECRET must be at least 32 bytes (got %zu); unset it to use a generated one\n",
                strlen(secret));
    return nproblems;
}
