/*
 * bin/aicode: the CLI (serve, token, migrate, check-config) and process set-up:
 * configuration, the data directory, the JWT secret, signals.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <lauxlib.h>

#include "host/config.h"
#include "host/core.h"
#include "host/http.h"
#include "host/sched.h"
#include "host/timers.h"
#include "host/jwt.h"
#include "host/log.h"
#include "host/migrate.h"
#include "host/server.h"
#include "host/vm.h"
#include "host/watch.h"

static const char usage[] =
    "usage: aicode <command> [options]\n"
    "\n"
    "commands:\n"
    "  serve          run the HTTP API server (what `make run` calls)\n"
    "  token --user ID\n"
    "                 print {\"access_token\",\"refresh_token\",\"expires_in\"} for a user,\n"
    "                 creating the user row if missing\n"
    "  migrate        apply pending database migrations\n"
    "  check-config   validate the environment; exit 1 with a list of problems\n"
    "\n"
    "Configuration comes from environment variables and an optional .env file\n"
    "(AICODE_ENV_FILE, default ./.env); see the README for the full table.\n"
    "`aicode <command> --help` describes one command.\n";

static const char *command_help(const char *cmd)
{
    if (strcmp(cmd, "serve") == 0)
        return "usage: aicode serve\n\nServes the API on HOST:PORT (default 127.0.0.1:8000) with "
               "WORKERS threads.\n"
               "Applies pending migrations first. SIGTERM drains in-flight requests and exits;\n"
               "SIGHUP reloads scripts/ and lualib/ (AICODE_DEV=1 also reloads on file changes).\n";
    if (strcmp(cmd, "token") == 0)
        return "usage: aicode token --user USER_ID\n\nPrints a JSON object with an access token, a "
               "refresh token and\n"
               "expires_in (seconds) for USER_ID (a UUID), creating the user row if missing.\n"
               "This is how tokens are issued when Supabase auth is not configured.\n";
    if (strcmp(cmd, "migrate") == 0)
        return "usage: aicode migrate\n\nApplies pending migrations from AICODE_DB_DIR (default "
               "./db) to the\n"
               "store's database and prints how many were applied.\n";
    if (strcmp(cmd, "check-config") == 0)
        return "usage: aicode check-config\n\nValidates every configuration variable. Prints "
               "\"configuration ok\" and\n"
               "exits 0, or prints one line per problem and exits 1.\n";
    return NULL;
}

static int ensure_dir(const char *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; ++p)
        if (*p == '/') {
            *p = '\0';
            mkdir(tmp, 0700);
            *p = '/';
        }
    if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

/* JWT_SECRET from the environment, else data/jwt_secret, else a new one (mode 0600). */
static int load_jwt_secret(char *out, size_t cap, char *err, size_t errlen)
{
    const char *env = getenv("JWT_SECRET");
    if (env != NULL && *env != '\0') {
        snprintf(out, cap, "%s", env);
        return 0;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/jwt_secret", host_config.data_dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, out, cap - 1);
        close(fd);
        if (n <= 0) {
            snprintf(err, errlen, "%s is empty", path);
            return -1;
        }
        out[n] = '\0';
        out[strcspn(out, "\r\n")] = '\0';
        return 0;
    }
    unsigned char raw[32];
    if (getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw)) {
        snprintf(err, errlen, "getrandom failed");
        return -1;
    }
    for (size_t i = 0; i < sizeof(raw); ++i)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        if (errno == EEXIST) /* another process won the race: use its secret */
            return load_jwt_secret(out, cap, err, errlen);
        snprintf(err, errlen, "cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    ssize_t w = write(fd, out, strlen(out));
    close(fd);
    if (w != (ssize_t)strlen(out)) {
        snprintf(err, errlen, "cannot write %s", path);
        return -1;
    }
    host_log("info", "generated a new JWT secret in %s", path);
    return 0;
}

/* Registers every secret-bearing variable with the log redactor. */
static void register_env_secrets(void)
{
    static const char *names[] = {"JWT_SECRET",
                                  "SUPABASE_JWT_SECRET",
                                  "SUPABASE_SERVICE_ROLE_KEY",
                                  "SUPABASE_ANON_KEY",
                                  "E2B_API_KEY",
                                  "ANTHROPIC_API_KEY",
                                  "OPENAI_API_KEY",
                                  "GITHUB_TOKEN",
                                  "DATABASE_URL",
                                  NULL};
    for (int i = 0; names[i] != NULL; ++i)
        host_log_register_secret(getenv(names[i]));
}

/* Common set-up for commands that touch the store or tokens. */
static int prepare_runtime(int migrate_now)
{
    char err[8192], secret[512];
    if (ensure_dir(host_config.data_dir) != 0) {
        fprintf(stderr, "aicode: cannot create data directory %s: %s\n", host_config.data_dir,
                strerror(errno));
        return -1;
    }
    register_env_secrets();
    if (load_jwt_secret(secret, sizeof(secret), err, sizeof(err)) != 0) {
        fprintf(stderr, "aicode: %s\n", err);
        return -1;
    }
    host_log_register_secret(secret);
    const char *supa = getenv("SUPABASE_JWT_SECRET");
    if (host_jwt_configure(secret, strlen(secret), supa, supa != NULL ? strlen(supa) : 0,
                           host_config.access_ttl_s, host_config.refresh_ttl_s, err,
                           sizeof(err)) != 0) {
        fprintf(stderr, "aicode: %s\n", err);
        return -1;
    }
    memset(secret, 0, sizeof(secret));
    /* Scripts and child processes never see the signing secrets; they only learn
     * which Supabase verification mode is active. */
    if (supa != NULL && *supa != '\0')
        setenv("AICODE_SUPABASE_JWT_MODE", "hs256", 1);
    unsetenv("JWT_SECRET");
    unsetenv("SUPABASE_JWT_SECRET");
    if (migrate_now) {
        char db[4096];
        host_db_path(db, sizeof(db));
        if (host_migrate_sqlite(db, host_config.db_dir, err, sizeof(err)) < 0) {
            fprintf(stderr, "aicode: %s\n", err);
            return -1;
        }
    }
    return 0;
}

/*
 * Runs app.cli.run(cmd, args...) as a coroutine on a private event loop, so CLI
 * commands can use the same yielding host calls as routes (a Supabase store talks
 * HTTP). Its result string goes to stdout unless `quiet_ok`; its error goes to
 * `errout`. Returns the exit status.
 */
typedef struct {
    int finished, rc, quiet_ok;
    FILE *errout;
} cli_result_t;

static void on_cli_done(host_co_t *co, int status, int nresults)
{
    cli_result_t *res = co->owner;
    lua_State *L = co->L;
    res->finished = 1;
    res->rc = 1;
    if (status != LUA_OK) {
        fprintf(stderr, "aicode: %s\n", lua_tostring(L, -1));
        return;
    }
    int base = lua_gettop(L) - nresults; /* results: value, err */
    if (nresults >= 1 && lua_isstring(L, base + 1)) {
        if (!res->quiet_ok)
            printf("%s\n", lua_tostring(L, base + 1));
        res->rc = 0;
    } else {
        const char *msg = nresults >= 2 ? lua_tostring(L, base + 2) : NULL;
        fprintf(res->errout, "%s\n", msg != NULL ? msg : "aicode: command failed");
    }
}

static int run_lua_cli(const char *cmd, int argc, char **argv, int quiet_ok, FILE *errout)
{
    char err[4096];
    static host_worker_t cli; /* one per process: CLI commands run one at a time */
    if (cli.loop == NULL) {
        cli.loop = h2o_evloop_create();
        cli.timers = host_timers_create(cli.loop);
        host_current_worker = &cli;
        cli.http = host_http_create(&cli);
    }
    host_current_worker = &cli;
    host_gen_t *gen = host_vm_build("app.cli", "run", err, sizeof(err));
    if (gen == NULL) {
        fprintf(stderr, "aicode: cannot load scripts: %s\n", err);
        return 1;
    }
    cli.gen = gen;
    cli_result_t res = {0, 1, quiet_ok, errout};
    host_co_t *co = host_co_new_on(&cli, gen, on_cli_done, &res, 0, 0);
    lua_rawgeti(co->L, LUA_REGISTRYINDEX, gen->handle_ref);
    lua_pushstring(co->L, cmd);
    for (int i = 0; i < argc; ++i)
        lua_pushstring(co->L, argv[i]);
    host_co_resume(co, argc + 1);
    while (!res.finished)
        h2o_evloop_run(cli.loop, 100);
    gen->retired = 1;
    if (gen->refs == 0)
        host_vm_close(gen);
    cli.gen = NULL;
    return res.rc;
}

static int cmd_serve(void)
{
    if (prepare_runtime(1) != 0)
        return 1;
    /* Settings the scripts read (CORS, rate limits, Supabase) are validated before
     * listening: a typo must not silently fall back to a default. */
    if (run_lua_cli("validate-config", 0, NULL, 1, stderr) != 0) {
        fprintf(stderr, "aicode: invalid configuration (see above); `aicode check-config` lists "
                        "every problem\n");
        return 1;
    }
    if (getenv("AUTH_TRUST_CLIENT_USER_ID") != NULL &&
        strcmp(getenv("AUTH_TRUST_CLIENT_USER_ID"), "1") == 0)
        host_log("warn",
                 "AUTH_TRUST_CLIENT_USER_ID=1: POST /api/auth/token issues tokens for ANY user_id "
                 "without proof of identity. Use only with the unmodified legacy frontend on a "
                 "trusted network.");
    if (host_server_init() != 0 || host_server_start() != 0)
        return 1;
    if (host_config.dev) {
        const char *dirs[] = {host_config.scripts_dir, host_config.lualib_dir};
        if (host_watch_start(dirs, 2) != 0)
            host_log("warn", "AICODE_DEV=1 but inotify is unavailable: reload with SIGHUP");
    }
    host_log("info", "aicode %s listening on %s://%s:%d with %d workers", AICODE_VERSION,
             host_config.tls_cert != NULL ? "https" : "http", host_config.host, host_config.port,
             host_config.workers);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    for (;;) {
        int sig;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            host_server_reload();
            continue;
        }
        break;
    }
    host_server_drain_and_stop();
    return 0;
}

int main(int argc, char **argv)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    host_started_at = (double)tv.tv_sec + (double)tv.tv_usec / 1e6;

    /* Block the signals before any thread exists so every thread inherits the mask;
     * the main thread takes them with sigwait. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    umask(077); /* the database, the JWT secret and logs are private to the service user */

    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    const char *help = command_help(cmd);
    if (help == NULL) {
        fprintf(stderr, "aicode: unknown command '%s'\n\n%s", cmd, usage);
        return 2;
    }
    for (int i = 2; i < argc; ++i)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(help, stdout);
            return 0;
        }

    char err[4096], problems[8192];
    const char *envfile = getenv("AICODE_ENV_FILE") != NULL ? getenv("AICODE_ENV_FILE") : ".env";
    if (host_config_load_dotenv(envfile, err, sizeof(err)) != 0) {
        fprintf(stderr, "aicode: %s\n", err);
        return 1;
    }
    int nproblems = host_config_read(problems, sizeof(problems));
    if (host_log_open(host_config.log_file) != 0) {
        fprintf(stderr, "aicode: cannot open LOG_FILE %s\n", host_config.log_file);
        return 1;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);

    if (strcmp(cmd, "check-config") == 0) {
        /* C-level problems first, then the scripts' own checks (store, auth, CORS...). */
        fputs(problems, stdout);
        /* "configuration ok" only when the C-level checks found nothing either. */
        int lua_rc = run_lua_cli("check-config", 0, NULL, nproblems != 0, stdout);
        return nproblems == 0 && lua_rc == 0 ? 0 : 1;
    }
    if (nproblems != 0) {
        fprintf(stderr, "aicode: invalid configuration:\n%s", problems);
        return 1;
    }
    if (strcmp(cmd, "serve") == 0) {
        if (argc > 2) {
            fprintf(stderr, "aicode serve: unexpected argument '%s'\n", argv[2]);
            return 2;
        }
        return cmd_serve();
    }
    if (strcmp(cmd, "migrate") == 0) {
        /* With DATABASE_URL: the Supabase/PostgreSQL schema (db/supabase) via psql. */
        const char *dburl = getenv("DATABASE_URL");
        if (dburl != NULL && *dburl != '\0') {
            char script[4096];
            snprintf(script, sizeof(script), "%s/../tools/migrate_pg.sh", host_config.db_dir);
            execl("/bin/bash", "bash", script, (char *)NULL); /* reads DATABASE_URL itself */
            fprintf(stderr, "aicode: cannot run %s: %s\n", script, strerror(errno));
            return 1;
        }
        char db[4096];
        if (ensure_dir(host_config.data_dir) != 0) {
            fprintf(stderr, "aicode: cannot create %s\n", host_config.data_dir);
            return 1;
        }
        host_db_path(db, sizeof(db));
        int n = host_migrate_sqlite(db, host_config.db_dir, err, sizeof(err));
        if (n < 0) {
            fprintf(stderr, "aicode: %s\n", err);
            return 1;
        }
        printf("%d migration(s) applied to %s\n", n, db);
        return 0;
    }
    if (strcmp(cmd, "token") == 0) {
        const char *user = NULL;
        for (int i = 2; i < argc; ++i) {
            if (strcmp(argv[i], "--user") == 0 && i + 1 < argc)
                user = argv[++i];
            else if (strncmp(argv[i], "--user=", 7) == 0)
                user = argv[i] + 7;
            else {
                fprintf(stderr, "aicode token: unexpected argument '%s'\n%s", argv[i], help);
                return 2;
            }
        }
        if (user == NULL) {
            fprintf(stderr, "aicode token: --user is required\n%s", help);
            return 2;
        }
        if (prepare_runtime(1) != 0)
            return 1;
        char *args[] = {(char *)user};
        return run_lua_cli("token", 1, args, 0, stderr);
    }
    return 2;
}
