/*
 * Process configuration: read once from the environment (and an optional .env
 * file) before any thread starts, then read-only. Lua reads its own settings
 * through host.env(); the values here are the ones the C host itself needs.
 */
#ifndef HOST_CONFIG_H
#define HOST_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define AICODE_VERSION "0.1.0"

typedef struct host_config_t {
    const char *host;            /* HOST, default 127.0.0.1 */
    int port;                    /* PORT, default 8000 */
    int workers;                 /* WORKERS, default number of cores */
    const char *tls_cert;        /* TLS_CERT */
    const char *tls_key;         /* TLS_KEY */
    const char *data_dir;        /* AICODE_DATA_DIR, default ./data */
    const char *scripts_dir;     /* AICODE_SCRIPTS_DIR, default ./scripts */
    const char *lualib_dir;      /* AICODE_LUALIB_DIR, default ./lualib */
    const char *db_dir;          /* AICODE_DB_DIR (migrations), default ./db */
    int dev;                     /* AICODE_DEV=1: watch scripts and hot reload */
    size_t max_body;             /* MAX_BODY_BYTES, default 1 MiB */
    uint64_t proxy_timeout_ms;   /* MODEL_PROXY_TIMEOUT_MS, default 600000 (/internal/model/) */
    int max_header_count;        /* MAX_HEADER_COUNT, default 64 */
    size_t max_header_bytes;     /* MAX_HEADER_BYTES, default 16 KiB */
    uint64_t request_timeout_ms; /* REQUEST_TIMEOUT_MS, default 30000 */
    uint64_t idle_timeout_ms;    /* IDLE_TIMEOUT_MS, default 10000 (also header read timeout) */
    size_t max_connections;      /* MAX_CONNECTIONS, default 4096 */
    uint64_t drain_timeout_ms;   /* DRAIN_TIMEOUT_MS, default 20000 */
    const char *log_file;        /* LOG_FILE, default stderr */
    long access_ttl_s;           /* JWT_ACCESS_TOKEN_EXPIRE_MINUTES * 60 */
    long refresh_ttl_s;          /* JWT_REFRESH_TOKEN_EXPIRE_DAYS * 86400 */
} host_config_t;

extern host_config_t host_config;

/** Path prefix of the model API proxy the sandboxed agents call (longer deadline). */
#define HOST_MODEL_PROXY_PREFIX "/internal/model/"

/**
 * Loads `path` (KEY=VALUE lines, # comments, optional quotes) into the environment
 * without overriding variables that are already set. A missing file is not an error.
 */
int host_config_load_dotenv(const char *path, char *err, size_t errlen);

/**
 * Fills host_config from the environment. Returns the number of problems found and
 * appends one readable line per problem to `problems` (may be NULL).
 */
int host_config_read(char *problems, size_t problems_len);

#endif
