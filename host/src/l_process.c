/*
 * host.process: fork/exec with pipes and a pidfd, all watched by the h2o loop.
 *
 * Ownership: a proc_t is owned jointly by its Lua userdata and by the running
 * child (the pidfd watch). It is freed only when both have let go (h2o's
 * two-owner rule), so a child that outlives its Lua handle is still reaped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lauxlib.h>

#include "host/process.h"
#include "host/sched.h"
#include "host/secret.h"

#define PROCESS_MT "host.process"
#define MAX_ARGS 256
#define MAX_ENV 256
#define MAX_BUFFERED (1024 * 1024) /* per stream; reading pauses above this */

enum { STREAM_OUT, STREAM_ERR, NSTREAMS };
static const char *stream_names[NSTREAMS] = {"stdout", "stderr"};

typedef struct proc proc_t;

typedef struct {
    proc_t *proc;
    h2o_socket_t *sock;
    char *buf;
    size_t len, cap;
    int eof;
} stream_t;

struct proc {
    host_worker_t *worker;
    pid_t pid;
    h2o_socket_t *pidfd_sock;
    h2o_socket_t *stdin_sock;
    stream_t streams[NSTREAMS];
    int exited, exit_code, exit_signal;
    char *stdin_buf; /* h2o keeps pointers into it until the write completes */
    int lua_alive;
    host_co_t *reader; /* coroutine waiting in read() */
    int busy;          /* inside a loop callback: resuming Lua may collect the handle */
    host_co_t *waiter; /* coroutine waiting in wait() */
};

typedef struct {
    proc_t *proc;
} proc_ud_t;

static void proc_maybe_free(proc_t *p)
{
    /* Not while a callback runs: it resumed Lua, which may have let go of the
     * handle, and the callback still touches p afterwards. */
    if (p->busy || p->lua_alive || !p->exited)
        return;
    for (int i = 0; i < NSTREAMS; ++i) {
        if (p->streams[i].sock != NULL) {
            h2o_socket_read_stop(p->streams[i].sock);
            h2o_socket_close(p->streams[i].sock);
        }
        free(p->streams[i].buf);
    }
    if (p->stdin_sock != NULL)
        h2o_socket_close(p->stdin_sock);
    free(p->stdin_buf);
    free(p);
}

static int all_eof(proc_t *p)
{
    return p->streams[STREAM_OUT].eof && p->streams[STREAM_ERR].eof;
}

static int has_data(proc_t *p)
{
    return p->streams[STREAM_OUT].len != 0 || p->streams[STREAM_ERR].len != 0;
}

/* Pushes the next chunk (preferring stdout) and returns the number of results. */
static int push_chunk(lua_State *L, proc_t *p)
{
    for (int i = 0; i < NSTREAMS; ++i) {
        stream_t *s = &p->streams[i];
        if (s->len != 0) {
            lua_pushlstring(L, s->buf, s->len);
            lua_pushstring(L, stream_names[i]);
            s->len = 0;
            return 2;
        }
    }
    lua_pushnil(L);
    return 1;
}

static void stream_resume_reading(stream_t *s);

static void wake_reader(proc_t *p)
{
    host_co_t *co = p->reader;
    if (co == NULL || (!has_data(p) && !all_eof(p)))
        return;
    p->reader = NULL;
    host_co_clear_op(co);
    int n = push_chunk(co->L, p);
    for (int i = 0; i < NSTREAMS; ++i)
        stream_resume_reading(&p->streams[i]);
    host_co_resume(co, n);
}

static void wake_waiter(proc_t *p)
{
    host_co_t *co = p->waiter;
    if (co == NULL || !p->exited)
        return;
    p->waiter = NULL;
    host_co_clear_op(co);
    if (p->exit_signal == 0) {
        lua_pushinteger(co->L, p->exit_code);
        lua_pushnil(co->L);
    } else {
        lua_pushnil(co->L);
        lua_pushinteger(co->L, p->exit_signal);
    }
    host_co_resume(co, 2);
}

static void on_stream_readable(h2o_socket_t *sock, const char *err);

static void stream_resume_reading(stream_t *s)
{
    if (s->sock != NULL && !s->eof && s->len < MAX_BUFFERED)
        h2o_socket_read_start(s->sock, on_stream_readable);
}

static void on_stream_readable(h2o_socket_t *sock, const char *err)
{
    stream_t *s = sock->data;
    proc_t *p = s->proc;
    (void)err;
    ++p->busy;
    int fd = h2o_socket_get_fd(sock);
    for (;;) {
        if (s->len >= MAX_BUFFERED) {
            h2o_socket_read_stop(sock); /* backpressure until Lua reads */
            break;
        }
        if (s->cap - s->len < 16384) {
            size_t cap = s->cap != 0 ? s->cap * 2 : 65536;
            char *nb = realloc(s->buf, cap);
            if (nb == NULL)
                break;
            s->buf = nb;
            s->cap = cap;
        }
        ssize_t n = read(fd, s->buf + s->len, s->cap - s->len);
        if (n > 0) {
            s->len += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        /* EOF or a hard error: the stream is done. */
        s->eof = 1;
        h2o_socket_read_stop(sock);
        h2o_socket_close(sock);
        s->sock = NULL;
        break;
    }
    wake_reader(p);
    --p->busy;
    proc_maybe_free(p);
}

static void on_pidfd_readable(h2o_socket_t *sock, const char *err)
{
    proc_t *p = sock->data;
    (void)err;
    ++p->busy;
    int status;
    pid_t r = waitpid(p->pid, &status, WNOHANG);
    if (r == 0) {
        --p->busy;
        return; /* spurious */
    }
    p->exited = 1;
    if (r == p->pid && WIFEXITED(status))
        p->exit_code = WEXITSTATUS(status);
    else if (r == p->pid && WIFSIGNALED(status))
        p->exit_signal = WTERMSIG(status);
    else
        p->exit_code = -1;
    h2o_socket_read_stop(sock);
    h2o_socket_close(sock);
    p->pidfd_sock = NULL;
    wake_waiter(p);
    --p->busy;
    proc_maybe_free(p);
}

static void on_stdin_written(h2o_socket_t *sock, const char *err)
{
    proc_t *p = sock->data;
    (void)err;
    h2o_socket_close(sock);
    p->stdin_sock = NULL;
    free(p->stdin_buf);
    p->stdin_buf = NULL;
}

/* --- spawning ----------------------------------------------------------- */

typedef struct {
    char *argv[MAX_ARGS + 1];
    char *envp[MAX_ENV + 1];
    int nargs, nenv;
    char path[4096];
    const char *cwd;
    struct {
        int resource;
        rlim_t value;
    } limits[8];
    int nlimits;
} spawn_spec_t;

static void spec_free(spawn_spec_t *sp)
{
    for (int i = 0; i < sp->nargs; ++i)
        free(sp->argv[i]);
    for (int i = 0; i < sp->nenv; ++i) {
        explicit_bzero(sp->envp[i], strlen(sp->envp[i])); /* may hold a secret */
        free(sp->envp[i]);
    }
}

/* PATH lookup done before fork, so the child only calls execve. */
static int resolve_program(const char *prog, const char *pathvar, char *out, size_t cap)
{
    if (strchr(prog, '/') != NULL) {
        snprintf(out, cap, "%s", prog);
        return access(out, X_OK) == 0 ? 0 : -1;
    }
    const char *p = pathvar != NULL ? pathvar : "/usr/local/bin:/usr/bin:/bin";
    while (*p) {
        const char *colon = strchr(p, ':');
        size_t n = colon != NULL ? (size_t)(colon - p) : strlen(p);
        snprintf(out, cap, "%.*s/%s", (int)n, p, prog);
        struct stat st;
        if (n > 0 && stat(out, &st) == 0 && S_ISREG(st.st_mode) && access(out, X_OK) == 0)
            return 0;
        if (colon == NULL)
            break;
        p = colon + 1;
    }
    return -1;
}

static void read_spec(lua_State *L, spawn_spec_t *sp)
{
    memset(sp, 0, sizeof(*sp));
    lua_getfield(L, 1, "argv");
    luaL_argcheck(L, lua_istable(L, -1), 1, "argv must be a table");
    int n = (int)lua_rawlen(L, -1);
    luaL_argcheck(L, n > 0 && n <= MAX_ARGS, 1, "argv must have 1..256 items");
    for (int i = 1; i <= n; ++i) {
        lua_rawgeti(L, -1, i);
        size_t len;
        const char *a = lua_tolstring(L, -1, &len);
        if (a == NULL || lua_type(L, -1) != LUA_TSTRING || memchr(a, '\0', len) != NULL) {
            spec_free(sp);
            luaL_error(L, "process.spawn: argv[%d] must be a string without NUL", i);
        }
        sp->argv[sp->nargs++] = strdup(a);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);

    const char *pathvar = NULL;
    lua_getfield(L, 1, "env");
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2) != 0) {
            size_t klen, vlen;
            const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &klen) : NULL;
            const char *v = host_secret_value(L, -1, &vlen);
            if (v == NULL && lua_type(L, -1) == LUA_TSTRING)
                v = lua_tolstring(L, -1, &vlen);
            if (k == NULL || v == NULL || klen == 0 || memchr(k, '=', klen) != NULL ||
                memchr(v, '\0', vlen) != NULL || sp->nenv >= MAX_ENV) {
                spec_free(sp);
                luaL_error(L, "process.spawn: env entries must be NAME = string|secret");
            }
            char *e = malloc(klen + vlen + 2);
            memcpy(e, k, klen);
            e[klen] = '=';
            memcpy(e + klen + 1, v, vlen);
            e[klen + 1 + vlen] = '\0';
            sp->envp[sp->nenv++] = e;
            if (strcmp(k, "PATH") == 0)
                pathvar = e + 5;
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);

    lua_getfield(L, 1, "rlimits");
    if (lua_istable(L, -1)) {
        static const struct {
            const char *name;
            int resource;
        } names[] = {{"cpu", RLIMIT_CPU},     {"fsize", RLIMIT_FSIZE}, {"nofile", RLIMIT_NOFILE},
                     {"nproc", RLIMIT_NPROC}, {"as", RLIMIT_AS},       {"core", RLIMIT_CORE}};
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); ++i) {
            lua_getfield(L, -1, names[i].name);
            if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 0) {
                sp->limits[sp->nlimits].resource = names[i].resource;
                sp->limits[sp->nlimits].value = (rlim_t)lua_tointeger(L, -1);
                ++sp->nlimits;
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);

    if (resolve_program(sp->argv[0], pathvar, sp->path, sizeof(sp->path)) != 0) {
        spec_free(sp);
        sp->nargs = 0;
    }
}

static int l_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    host_worker_t *w = host_current_worker;
    if (w == NULL)
        return luaL_error(L, "host.process.spawn can only be used on a worker thread");
    spawn_spec_t sp;
    read_spec(L, &sp);
    if (sp.nargs == 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "program not found");
        return 2;
    }
    lua_getfield(L, 1, "cwd");
    sp.cwd = lua_tostring(L, -1); /* stays on the stack until we return */
    size_t stdin_len = 0;
    lua_getfield(L, 1, "stdin");
    const char *stdin_data = lua_tolstring(L, -1, &stdin_len);

    int out[2] = {-1, -1}, errp[2] = {-1, -1}, in[2] = {-1, -1};
    if (pipe2(out, O_CLOEXEC) != 0 || pipe2(errp, O_CLOEXEC) != 0 || pipe2(in, O_CLOEXEC) != 0) {
        int e = errno;
        for (int i = 0; i < 2; ++i) {
            if (out[i] >= 0)
                close(out[i]);
            if (errp[i] >= 0)
                close(errp[i]);
            if (in[i] >= 0)
                close(in[i]);
        }
        spec_free(&sp);
        lua_pushnil(L);
        lua_pushstring(L, strerror(e));
        return 2;
    }

    pid_t pid = fork();
    if (pid == 0) {
        /* Child: only async-signal-safe calls until execve. */
        setsid();
        dup2(in[0], 0);
        dup2(out[1], 1);
        dup2(errp[1], 2);
        if (sp.cwd != NULL && chdir(sp.cwd) != 0)
            _exit(126);
        for (int i = 0; i < sp.nlimits; ++i) {
            struct rlimit rl = {sp.limits[i].value, sp.limits[i].value};
            if (setrlimit(sp.limits[i].resource, &rl) != 0)
                _exit(126);
        }
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL); /* the host blocks signals in its threads */
        signal(SIGPIPE, SIG_DFL);
        syscall(SYS_close_range, 3, ~0U, 0);
        execve(sp.path, sp.argv, sp.envp);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    close(errp[1]);
    spec_free(&sp);
    if (pid < 0) {
        int e = errno;
        close(in[1]);
        close(out[0]);
        close(errp[0]);
        lua_pushnil(L);
        lua_pushstring(L, strerror(e));
        return 2;
    }
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) {
        int e = errno;
        kill(-pid, SIGKILL);
        waitpid(pid, NULL, 0);
        close(in[1]);
        close(out[0]);
        close(errp[0]);
        lua_pushnil(L);
        lua_pushfstring(L, "pidfd_open: %s", strerror(e));
        return 2;
    }

    proc_t *p = calloc(1, sizeof(*p));
    p->worker = w;
    p->pid = pid;
    p->lua_alive = 1;
    int fds[NSTREAMS] = {out[0], errp[0]};
    for (int i = 0; i < NSTREAMS; ++i) {
        fcntl(fds[i], F_SETFL, O_NONBLOCK);
        p->streams[i].proc = p;
        p->streams[i].sock = h2o_evloop_socket_create(w->loop, fds[i], H2O_SOCKET_FLAG_DONT_READ);
        p->streams[i].sock->data = &p->streams[i];
        h2o_socket_read_start(p->streams[i].sock, on_stream_readable);
    }
    p->pidfd_sock = h2o_evloop_socket_create(w->loop, pidfd, H2O_SOCKET_FLAG_DONT_READ);
    p->pidfd_sock->data = p;
    h2o_socket_read_start(p->pidfd_sock, on_pidfd_readable);

    fcntl(in[1], F_SETFL, O_NONBLOCK);
    p->stdin_sock = h2o_evloop_socket_create(w->loop, in[1], 0);
    p->stdin_sock->data = p;
    if (stdin_data != NULL && stdin_len != 0) {
        /* h2o keeps only the iovec, not the bytes, until the write completes. */
        p->stdin_buf = malloc(stdin_len);
        memcpy(p->stdin_buf, stdin_data, stdin_len);
        h2o_iovec_t buf = h2o_iovec_init(p->stdin_buf, stdin_len);
        h2o_socket_write(p->stdin_sock, &buf, 1, on_stdin_written);
    } else {
        h2o_socket_close(p->stdin_sock);
        p->stdin_sock = NULL;
    }

    proc_ud_t *ud = lua_newuserdatauv(L, sizeof(*ud), 0);
    ud->proc = p;
    luaL_setmetatable(L, PROCESS_MT);
    return 1;
}

static proc_t *check_proc(lua_State *L)
{
    proc_ud_t *ud = luaL_checkudata(L, 1, PROCESS_MT);
    if (ud->proc == NULL)
        luaL_error(L, "process handle is closed");
    return ud->proc;
}

static void reader_cancel(void *op)
{
    proc_t *p = op;
    p->reader = NULL;
}

static void waiter_cancel(void *op)
{
    proc_t *p = op;
    p->waiter = NULL;
}

static int l_read(lua_State *L)
{
    proc_t *p = check_proc(L);
    if (has_data(p) || all_eof(p)) {
        int n = push_chunk(L, p);
        for (int i = 0; i < NSTREAMS; ++i)
            stream_resume_reading(&p->streams[i]);
        return n;
    }
    if (p->reader != NULL)
        return luaL_error(L, "another coroutine is already reading this process");
    p->reader = host_co_current(L);
    lua_settop(L, 1); /* the suspended coroutine keeps the handle (and so p) alive */
    return host_co_yield_op(L, p, reader_cancel);
}

static int l_wait(lua_State *L)
{
    proc_t *p = check_proc(L);
    if (p->exited) {
        if (p->exit_signal == 0) {
            lua_pushinteger(L, p->exit_code);
            lua_pushnil(L);
        } else {
            lua_pushnil(L);
            lua_pushinteger(L, p->exit_signal);
        }
        return 2;
    }
    if (p->waiter != NULL)
        return luaL_error(L, "another coroutine is already waiting for this process");
    p->waiter = host_co_current(L);
    lua_settop(L, 1);
    return host_co_yield_op(L, p, waiter_cancel);
}

static int l_kill(lua_State *L)
{
    proc_t *p = check_proc(L);
    int sig = (int)luaL_optinteger(L, 2, SIGKILL);
    if (!p->exited)
        kill(-p->pid, sig); /* the child leads its own session: signal the whole group */
    return 0;
}

static int l_running(lua_State *L)
{
    lua_pushboolean(L, !check_proc(L)->exited);
    return 1;
}

static int l_gc(lua_State *L)
{
    proc_ud_t *ud = luaL_checkudata(L, 1, PROCESS_MT);
    proc_t *p = ud->proc;
    if (p == NULL)
        return 0;
    ud->proc = NULL;
    if (!p->exited)
        kill(-p->pid, SIGKILL);
    p->reader = NULL;
    p->waiter = NULL;
    p->lua_alive = 0;
    proc_maybe_free(p);
    return 0;
}

static int l_index_pid(lua_State *L)
{
    proc_ud_t *ud = luaL_checkudata(L, 1, PROCESS_MT);
    const char *key = luaL_checkstring(L, 2);
    if (strcmp(key, "pid") == 0 && ud->proc != NULL) {
        lua_pushinteger(L, ud->proc->pid);
        return 1;
    }
    luaL_getmetatable(L, PROCESS_MT);
    lua_getfield(L, -1, "methods");
    lua_getfield(L, -1, key);
    return 1;
}

int host_open_process(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"read", l_read}, {"wait", l_wait}, {"kill", l_kill}, {"running", l_running}, {NULL, NULL}};
    if (luaL_newmetatable(L, PROCESS_MT)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "methods");
        lua_pushcfunction(L, l_index_pid);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_gc);
        lua_setfield(L, -2, "__close");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
    static const luaL_Reg funcs[] = {{"spawn", l_spawn}, {NULL, NULL}};
    luaL_newlib(L, funcs);
    return 1;
}
