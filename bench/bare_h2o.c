/*
 * Bare h2o 2.2.5 (evloop flavour) baseline for the benchmark: the same library,
 * threading model and listener setup as bin/aicode (one evloop per thread, one
 * SO_REUSEPORT listener per thread, TCP_NODELAY, accept up to 16 per wakeup),
 * but the handler is plain C: GET /ping answers
 *   {"message":"pong","status":"success","timestamp":1795769367.529}
 * (same keys, order and size as aicode's /ping), anything else 404.
 *
 * usage: bare_h2o PORT [THREADS]     (listens on 127.0.0.1; SIGTERM/SIGINT stop it)
 * env BARE_CHUNKED=1: do not set content-length, so h2o uses chunked transfer
 * encoding like aicode does today (diagnostic variant).
 */
#define H2O_USE_LIBUV 0
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <h2o.h>

typedef struct {
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    h2o_evloop_t *loop;
    pthread_t thread;
} worker_t;

static h2o_globalconf_t config;
static int port;
static int chunked;

static int on_ping(h2o_handler_t *self, h2o_req_t *req)
{
    (void)self;
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")))
        return -1;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char body[96];
    int n = snprintf(body, sizeof(body), "{\"message\":\"pong\",\"status\":\"success\",\"timestamp\":%lld.%03ld}",
                     (long long)ts.tv_sec, ts.tv_nsec / 1000000);
    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    if (!chunked)
        req->res.content_length = (size_t)n;
    h2o_send_inline(req, body, (size_t)n); /* copies into the request pool */
    return 0;
}

static int on_not_found(h2o_handler_t *self, h2o_req_t *req)
{
    (void)self;
    h2o_send_error_404(req, "Not Found", "not found", 0);
    return 0;
}

static void on_accept(h2o_socket_t *listener, const char *err)
{
    worker_t *w = listener->data;
    if (err != NULL)
        return;
    for (int i = 0; i < 16; ++i) {
        h2o_socket_t *sock = h2o_evloop_socket_accept(listener);
        if (sock == NULL)
            return;
        h2o_accept(&w->accept_ctx, sock);
    }
}

static int create_listener(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), on = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0 ||
        bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(fd, SOMAXCONN) != 0) {
        fprintf(stderr, "bare_h2o: cannot listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
        exit(1);
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    return fd;
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    for (;;)
        h2o_evloop_run(w->loop, INT32_MAX); /* -1 on EINTR (e.g. a tracer attaching): keep going */
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [THREADS]\n", argv[0]);
        return 2;
    }
    port = atoi(argv[1]);
    int nthreads = argc > 2 ? atoi(argv[2]) : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (nthreads < 1)
        nthreads = 1;
    const char *c = getenv("BARE_CHUNKED");
    chunked = c != NULL && strcmp(c, "1") == 0;
    signal(SIGPIPE, SIG_IGN);

    h2o_config_init(&config);
    h2o_hostconf_t *hostconf = h2o_config_register_host(&config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_create_handler(h2o_config_register_path(hostconf, "/ping", 0), sizeof(h2o_handler_t))->on_req = on_ping;
    h2o_create_handler(h2o_config_register_path(hostconf, "/", 0), sizeof(h2o_handler_t))->on_req = on_not_found;

    worker_t *workers = calloc((size_t)nthreads, sizeof(*workers));
    for (int i = 0; i < nthreads; ++i) {
        worker_t *w = &workers[i];
        w->loop = h2o_evloop_create();
        h2o_context_init(&w->ctx, w->loop, &config);
        w->accept_ctx.ctx = &w->ctx;
        w->accept_ctx.hosts = config.hosts;
        h2o_socket_t *ls = h2o_evloop_socket_create(w->loop, create_listener(), H2O_SOCKET_FLAG_DONT_READ);
        ls->data = w;
        h2o_socket_read_start(ls, on_accept);
    }
    for (int i = 0; i < nthreads; ++i)
        pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
    fprintf(stderr, "bare_h2o: listening on 127.0.0.1:%d with %d threads%s\n", port, nthreads,
            chunked ? " (chunked)" : "");
    for (int i = 0; i < nthreads; ++i)
        pthread_join(workers[i].thread, NULL);
    return 0;
}
