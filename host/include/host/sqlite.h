/*
 * host.sqlite: the SQLite binding that Lua handlers use for the store.
 *
 * Each host worker thread owns its own lua_State and opens its own connections
 * through this module; a connection (and every statement cached on it) stays on the
 * thread that opened it, so connections are opened with SQLITE_OPEN_NOMUTEX and the
 * binding keeps no global mutable state.
 *
 * Lua API (the table pushed by host_open_sqlite):
 *
 *   sqlite.open(path[, opts])     -> db | nil, err, code
 *       opts.readonly          open read-only (no WAL switch, writes fail "readonly")
 *       opts.busy_timeout_ms   busy timeout, default 5000
 *       Sets journal_mode=WAL (file databases), synchronous=NORMAL, foreign_keys=ON.
 *   sqlite.null                   the shared null sentinel (== json.null)
 *
 *   db:exec(sql)                  -> true | nil, err, code   (several statements allowed)
 *   db:query(sql, ...)            -> rows | nil, err, code   (array of {column = value})
 *   db:first(sql, ...)            -> row | nil | nil, err, code
 *   db:run(sql, ...)              -> changes, last_insert_rowid | nil, err, code
 *   db:begin() / db:commit() / db:rollback()  -> true | nil, err, code
 *   db:busy_timeout(ms)           -> previous timeout in ms
 *   db:close()                    -> true (idempotent; also __close and __gc)
 *
 * Values: INTEGER -> integer, REAL -> float, TEXT/BLOB -> string, NULL -> sqlite.null.
 * Parameters (`?`, positional, at most 64, count must match the statement): integer,
 * float, string (bound as TEXT), boolean (1/0), nil or sqlite.null (NULL). Any other
 * parameter type, a parameter count mismatch, more than one statement in
 * query/first/run, and any use of a closed db raise a Lua error: those are program
 * bugs, while failures of the database itself come back as `nil, err, code`.
 *
 * code is one of "unique" (UNIQUE or PRIMARY KEY violation), "constraint" (any other
 * constraint: foreign key, NOT NULL, CHECK), "busy" (SQLITE_BUSY/LOCKED), "readonly", "corrupt"
 * or "error". err is SQLite's message and may name tables or columns, so it is for
 * logs, not for clients.
 */
#ifndef HOST_SQLITE_H
#define HOST_SQLITE_H

#include <lua.h>

/**
 * Opens the host.sqlite module: registers the connection metatable (once per state)
 * and pushes the module table. Returns 1, so it can also serve as a lua_CFunction
 * for luaL_requiref. Safe to call on several states from several threads.
 */
int host_open_sqlite(lua_State *L);

#endif
