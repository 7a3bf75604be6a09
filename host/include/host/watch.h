/*
 * Development hot reload: an inotify watch over scripts/ and lualib/ (recursive,
 * new directories included). A burst of events is debounced for 100 ms, then
 * host_server_reload() builds a probe generation and swaps only if it loads.
 * Runs on its own thread, where blocking on read(2) is fine.
 */
#ifndef HOST_WATCH_H
#define HOST_WATCH_H

/** Starts the watcher thread. Returns -1 if inotify is unavailable. */
int host_watch_start(const char *const *dirs, int ndirs);

#endif
