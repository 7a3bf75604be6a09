#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "host/log.h"
#include "host/server.h"
#include "host/watch.h"

#define WATCH_MASK                                                                                 \
    (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ATTRIB)
#define DEBOUNCE_MS 100

static int inotify_fd = -1;

static void add_tree(const char *dir, int depth)
{
    if (depth > 8 || inotify_add_watch(inotify_fd, dir, WATCH_MASK | IN_ONLYDIR) < 0)
        return;
    DIR *d = opendir(dir);
    struct dirent *de;
    if (d == NULL)
        return;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char path[4096];
        struct stat st;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
            add_tree(path, depth + 1);
    }
    closedir(d);
}

static char **roots;
static int nroots;

static void *watch_main(void *arg)
{
    (void)arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        struct pollfd pfd = {.fd = inotify_fd, .events = POLLIN};
        if (poll(&pfd, 1, -1) <= 0)
            continue;
        int changed = 0;
        /* Drain the burst: editors write, rename and chmod in quick succession. */
        do {
            ssize_t n = read(inotify_fd, buf, sizeof(buf));
            for (char *p = buf; n > 0 && p < buf + n;) {
                struct inotify_event *ev = (struct inotify_event *)p;
                if ((ev->mask & IN_ISDIR) && (ev->mask & (IN_CREATE | IN_MOVED_TO)))
                    changed = 2; /* a new directory: re-scan the trees below */
                else if (ev->len > 0 && ev->name[0] != '.')
                    changed = changed ? changed : 1;
                p += sizeof(*ev) + ev->len;
            }
            pfd.revents = 0;
        } while (poll(&pfd, 1, DEBOUNCE_MS) > 0);
        if (changed == 2)
            for (int i = 0; i < nroots; ++i)
                add_tree(roots[i], 0);
        if (changed)
            host_server_reload();
    }
    return NULL;
}

int host_watch_start(const char *const *dirs, int ndirs)
{
    inotify_fd = inotify_init1(IN_CLOEXEC);
    if (inotify_fd < 0)
        return -1;
    roots = calloc((size_t)ndirs, sizeof(*roots));
    nroots = ndirs;
    for (int i = 0; i < ndirs; ++i) {
        roots[i] = strdup(dirs[i]);
        add_tree(dirs[i], 0);
    }
    pthread_t t;
    if (pthread_create(&t, NULL, watch_main, NULL) != 0)
        return -1;
    pthread_detach(t);
    return 0;
}
