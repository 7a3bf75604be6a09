/*
 * host.process: child processes driven from the event loop.
 *
 * Every child starts in its own session (setsid), so it and everything it starts
 * form one process group that kill() signals as a whole. Its stdout and stderr
 * are non-blocking pipes watched by the loop; its exit is a pidfd watched by the
 * loop; nothing ever blocks the worker thread.
 *
 * Lua API:
 *   p, err = host.process.spawn{
 *       argv = {"git", "clone", url, dir},  -- argv[1] is looked up in env PATH
 *       env = {PATH = "...", HOME = "...", TOKEN = host.secret("GITHUB_TOKEN")},
 *                                           -- the complete environment; values may be
 *                                           -- strings or host.secret handles
 *       cwd = "/path",                      -- optional
 *       stdin = "text",                     -- optional, written then closed
 *       rlimits = {cpu = s, fsize = bytes, nofile = n, nproc = n, as = bytes},
 *   }
 *   p.pid
 *   data, stream = p:read()     -- yields; next output chunk and "stdout"|"stderr";
 *                               -- nil once both streams are closed
 *   code, signal = p:wait()     -- yields until exit; code nil when killed by a signal
 *   p:kill([signal])            -- signals the whole process group (default SIGKILL)
 *   p:running()                 -- true until the exit has been observed
 * A process object that is garbage-collected while its child runs kills the group.
 */
#ifndef HOST_PROCESS_H
#define HOST_PROCESS_H

#include <lua.h>

/** Pushes the host.process module table. */
int host_open_process(lua_State *L);

#endif
