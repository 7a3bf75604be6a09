/*
 * host.sqlite: a small, fast SQLite binding for the Lua handlers.
 *
 * Threading: every worker thread has its own lua_State and opens its own
 * connections, so a connection never crosses threads. That is why connections are
 * opened with SQLITE_OPEN_NOMUTEX and why nothing here is global except the
 * (immutable) metatable names.
 *
 * Hot path: each API request runs a few queries, so a cache of up to
 * STMT_CACHE_SIZE prepared statements per connection avoids re-parsing SQL. Lookup
 * first compares the SQL string's address against the pinned Lua strings of the
 * cache (handlers pass constant strings, which keep their address), then falls back
 * to hash + memcmp for equal text held in a different string. No C allocation
 * happens per call; the only allocations are Lua's own result tables/strings.
 *
 * Error discipline: a statement that has been stepped must be reset before any
 * longjmp, or it would keep its read (or, for INSERT ... RETURNING, write)
 * transaction open. Explicit errors always call stmt_release() first. Lua memory
 * errors can strike while query/first build rows, so those two mark a per-db guard
 * object as to-be-closed; its __close resets the statement while the error unwinds.
 * As a last resort every entry point resets a statement still marked active.
 */
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include <sqlite3.h>

#include <lauxlib.h>
#include <lua.h>

#include "host/common.h"
#include "host/sqlite.h"

#define DB_MT "host.sqlite.db"
#define GUARD_MT "host.sqlite.guard"

#define STMT_CACHE_SIZE 64
#define MAX_PARAMS 64
#define DEFAULT_BUSY_TIMEOUT_MS 5000

/* User values of the db userdata. */
#define UV_GUARD 1 /* the to-be-closed guard (see file comment) */
#define UV_SQL 2   /* array: slot index + 1 -> pinned SQL string of that cache slot */

struct sqlite_db {
    sqlite3 *db;          /* NULL once closed */
    sqlite3_stmt *active; /* stepped or bound statement not yet reset, or NULL */
    int busy_timeout_ms;
    int nslots;
    uint64_t tick; /* LRU clock */
    /* Keys are kept in their own arrays so the lookup scans touch few cache lines. */
    const char *keys[STMT_CACHE_SIZE]; /* data of the pinned Lua string */
    uint32_t hashes[STMT_CACHE_SIZE];
    size_t lens[STMT_CACHE_SIZE];
    uint64_t last_used[STMT_CACHE_SIZE];
    sqlite3_stmt *stmts[STMT_CACHE_SIZE];
};

/* ---- helpers ------------------------------------------------------------------ */

static const char *code_name(int rc)
{
    /* A uniqueness violation is an expected outcome callers map to "conflict";
     * other constraint failures (foreign key, NOT NULL, CHECK) are bugs or races. */
    if (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY)
        return "unique";
    switch (rc & 0xff) {
    case SQLITE_CONSTRAINT:
        return "constraint";
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return "busy";
    case SQLITE_READONLY:
        return "readonly";
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return "corrupt";
    default:
        return "error";
    }
}

/* Pushes `nil, errmsg, code`. Call after the statement is reset: sqlite3_reset moves
 * the statement's error message onto the connection, so sqlite3_errmsg still holds it. */
static int push_error(lua_State *L, struct sqlite_db *d, int rc)
{
    lua_pushnil(L);
    lua_pushstring(L, d->db != NULL ? sqlite3_errmsg(d->db) : sqlite3_errstr(rc));
    lua_pushstring(L, code_name(rc));
    return 3;
}

/* Resets the active statement and drops its bindings (string parameters are bound
 * SQLITE_STATIC and point into the Lua stack, so they must not outlive the call). */
static void stmt_release(struct sqlite_db *d)
{
    sqlite3_stmt *st = d->active;
    if (st == NULL)
        return;
    d->active = NULL;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* Argument 1 as a db of ours, open or closed. The metatable is upvalue 1 of every
 * method, which is cheaper than luaL_checkudata's registry lookup. */
static struct sqlite_db *to_db(lua_State *L)
{
    struct sqlite_db *d = lua_type(L, 1) == LUA_TUSERDATA ? lua_touserdata(L, 1) : NULL;
    if (d == NULL || !lua_getmetatable(L, 1) || !lua_rawequal(L, -1, lua_upvalueindex(1)))
        luaL_typeerror(L, 1, DB_MT);
    lua_pop(L, 1);
    return d;
}

/* Argument 1 as an open db. */
static struct sqlite_db *check_db(lua_State *L)
{
    struct sqlite_db *d = to_db(L);
    if (d->db == NULL)
        luaL_error(L, "database is closed");
    /* Only non-NULL if an earlier call was unwound without its guard running. */
    if (d->active != NULL)
        stmt_release(d);
    return d;
}

static void db_close(struct sqlite_db *d)
{
    if (d->db == NULL)
        return;
    d->active = NULL;
    /* Finalize first: sqlite3_close would fail with statements still alive. */
    for (int i = 0; i < d->nslots; i++) {
        sqlite3_finalize(d->stmts[i]);
        d->stmts[i] = NULL;
        d->keys[i] = NULL;
    }
    d->nslots = 0;
    sqlite3_close_v2(d->db);
    d->db = NULL;
}

/* FNV-1a; only used when the address fast path misses. */
static uint32_t sql_hash(const char *s, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

/* True when `tail` (what prepare left over) holds another statement. Whitespace
 * and comments are fine; anything else would silently be ignored, so refuse it. */
static int has_more_sql(sqlite3 *db, const char *tail)
{
    while (*tail == ' ' || *tail == '\t' || *tail == '\n' || *tail == '\r' || *tail == ';')
        tail++;
    if (*tail == '\0')
        return 0;
    sqlite3_stmt *extra = NULL;
    int rc = sqlite3_prepare_v2(db, tail, -1, &extra, NULL);
    sqlite3_finalize(extra);
    return rc != SQLITE_OK || extra != NULL;
}

/* Slot to reuse when the cache is full: the least recently used one. */
static int evict_lru(struct sqlite_db *d)
{
    int victim = 0;
    for (int i = 1; i < d->nslots; i++)
        if (d->last_used[i] < d->last_used[victim])
            victim = i;
    sqlite3_finalize(d->stmts[victim]);
    d->stmts[victim] = NULL;
    d->keys[victim] = NULL;
    return victim;
}

/* Prepares the SQL at index 2 and caches it. Returns NULL with *rc set when SQLite
 * rejects it; raises (nothing held) for empty SQL or more than one statement. */
static sqlite3_stmt *stmt_prepare(lua_State *L, struct sqlite_db *d, const char *sql, size_t len,
                                  uint32_t hash, int *rc)
{
    if (strlen(sql) != len)
        luaL_argerror(L, 2, "SQL contains a NUL byte");
    if (len >= INT_MAX)
        luaL_argerror(L, 2, "SQL too long");

    sqlite3_stmt *st = NULL;
    const char *tail = NULL;
    /* len + 1: telling SQLite the text is NUL-terminated saves it a copy. */
    *rc = sqlite3_prepare_v3(d->db, sql, (int)len + 1, SQLITE_PREPARE_PERSISTENT, &st, &tail);
    if (*rc != SQLITE_OK)
        return NULL;
    if (st == NULL)
        luaL_argerror(L, 2, "empty SQL statement");
    if (has_more_sql(d->db, tail)) {
        sqlite3_finalize(st);
        luaL_argerror(L, 2, "only one SQL statement allowed here (use db:exec)");
    }

    int slot = d->nslots < STMT_CACHE_SIZE ? d->nslots++ : evict_lru(d);
    /* Pin the string so its address stays a valid key. Cannot raise: the array part
     * was sized for every slot at open. */
    lua_getiuservalue(L, 1, UV_SQL);
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, slot + 1);
    lua_pop(L, 1);
    d->keys[slot] = sql;
    d->hashes[slot] = hash;
    d->lens[slot] = len;
    d->last_used[slot] = ++d->tick;
    d->stmts[slot] = st;
    return st;
}

static sqlite3_stmt *stmt_lookup(lua_State *L, struct sqlite_db *d, const char *sql, size_t len,
                                 int *rc)
{
    for (int i = 0; i < d->nslots; i++) {
        if (d->keys[i] == sql) {
            d->last_used[i] = ++d->tick;
            return d->stmts[i];
        }
    }
    uint32_t hash = sql_hash(sql, len);
    for (int i = 0; i < d->nslots; i++) {
        if (d->hashes[i] == hash && d->lens[i] == len && memcmp(d->keys[i], sql, len) == 0) {
            d->last_used[i] = ++d->tick;
            return d->stmts[i];
        }
    }
    return stmt_prepare(L, d, sql, len, hash, rc);
}

/* Binds arguments 3..top to `?` 1..n. Raises for misuse after releasing. */
static int stmt_bind(lua_State *L, struct sqlite_db *d, sqlite3_stmt *st, int nparams)
{
    if (sqlite3_bind_parameter_count(st) != nparams) {
        int expected = sqlite3_bind_parameter_count(st);
        stmt_release(d);
        return luaL_error(L, "SQL expects %d parameter(s), got %d", expected, nparams);
    }
    for (int i = 1; i <= nparams; i++) {
        int idx = i + 2, rc = SQLITE_OK;
        switch (lua_type(L, idx)) {
        case LUA_TNUMBER:
            if (lua_isinteger(L, idx))
                rc = sqlite3_bind_int64(st, i, (sqlite3_int64)lua_tointeger(L, idx));
            else
                rc = sqlite3_bind_double(st, i, (double)lua_tonumber(L, idx));
            break;
        case LUA_TSTRING: {
            size_t n;
            const char *s = lua_tolstring(L, idx, &n);
            /* STATIC is safe: the string stays on the stack until stmt_release. */
            rc = sqlite3_bind_text64(st, i, s, n, SQLITE_STATIC, SQLITE_UTF8);
            break;
        }
        case LUA_TBOOLEAN:
            rc = sqlite3_bind_int(st, i, lua_toboolean(L, idx));
            break;
        case LUA_TNIL:
            break; /* already NULL: bindings are cleared after every use */
        case LUA_TLIGHTUSERDATA:
            if (host_is_null(L, idx))
                break;
            /* fall through */
        default:
            stmt_release(d);
            return luaL_argerror(
                L, idx,
                lua_pushfstring(L, "cannot bind a %s as SQL parameter", luaL_typename(L, idx)));
        }
        if (rc != SQLITE_OK)
            return rc;
    }
    return SQLITE_OK;
}

/* The statement for SQL at index 2 with arguments 3..top bound, marked active. NULL
 * with *rc set when SQLite refused (nothing is left active then). */
static sqlite3_stmt *stmt_acquire(lua_State *L, struct sqlite_db *d, int *rc)
{
    size_t len;
    const char *sql = luaL_checklstring(L, 2, &len);
    int nparams = lua_gettop(L) - 2;
    if (nparams > MAX_PARAMS)
        luaL_error(L, "too many SQL parameters (%d, at most %d)", nparams, MAX_PARAMS);

    sqlite3_stmt *st = stmt_lookup(L, d, sql, len, rc);
    if (st == NULL)
        return NULL;
    d->active = st;
    if ((*rc = stmt_bind(L, d, st, nparams)) != SQLITE_OK) {
        stmt_release(d);
        return NULL;
    }
    return st;
}

/* Marks the db's guard as to-be-closed so a Lua error while rows are built resets
 * the statement. Returns its stack index. */
static int guard_push(lua_State *L)
{
    lua_getiuservalue(L, 1, UV_GUARD);
    int idx = lua_gettop(L);
    lua_toclose(L, idx);
    return idx;
}

static void push_column(lua_State *L, sqlite3_stmt *st, int col)
{
    switch (sqlite3_column_type(st, col)) {
    case SQLITE_INTEGER:
        lua_pushinteger(L, (lua_Integer)sqlite3_column_int64(st, col));
        break;
    case SQLITE_FLOAT:
        lua_pushnumber(L, (lua_Number)sqlite3_column_double(st, col));
        break;
    case SQLITE_TEXT: {
        const char *p = (const char *)sqlite3_column_text(st, col);
        /* bytes after text: the documented safe order. */
        size_t n = (size_t)sqlite3_column_bytes(st, col);
        lua_pushlstring(L, p != NULL ? p : "", p != NULL ? n : 0);
        break;
    }
    case SQLITE_BLOB: {
        const char *p = sqlite3_column_blob(st, col);
        size_t n = (size_t)sqlite3_column_bytes(st, col);
        lua_pushlstring(L, p != NULL ? p : "", p != NULL ? n : 0); /* empty blob: NULL */
        break;
    }
    default:
        host_push_null(L); /* keeps the key present, unlike nil */
        break;
    }
}

static void push_column_name(lua_State *L, sqlite3_stmt *st, int col)
{
    const char *name = sqlite3_column_name(st, col);
    lua_pushstring(L, name != NULL ? name : "?"); /* NULL only on OOM; nil can't be a key */
}

/* Makes room for the column names, one row table, a key and a value. */
static void ensure_stack(lua_State *L, struct sqlite_db *d, int ncol)
{
    if (!lua_checkstack(L, ncol + 4)) {
        stmt_release(d);
        luaL_error(L, "too many result columns (%d)", ncol);
    }
}

/* Steps the active statement to completion, ignoring rows, and releases it. */
static int stmt_finish(struct sqlite_db *d, sqlite3_stmt *st)
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    }
    stmt_release(d);
    return rc;
}

/* ---- module functions ------------------------------------------------------- */

static int l_sqlite_open(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    int readonly = 0;
    lua_Integer busy_ms = DEFAULT_BUSY_TIMEOUT_MS;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "readonly");
        readonly = lua_toboolean(L, -1);
        if (lua_getfield(L, 2, "busy_timeout_ms") != LUA_TNIL) {
            int isint;
            busy_ms = lua_tointegerx(L, -1, &isint);
            if (!isint || busy_ms < 0 || busy_ms > INT_MAX)
                return luaL_argerror(L, 2, "busy_timeout_ms must be a non-negative integer");
        }
        lua_pop(L, 2);
    }
    lua_settop(L, 1);

    /* The userdata exists (with __gc) before the handle, so no error can leak it. */
    struct sqlite_db *d = lua_newuserdatauv(L, sizeof(*d), 2);
    memset(d, 0, sizeof(*d));
    luaL_setmetatable(L, DB_MT);
    struct sqlite_db **guard = lua_newuserdatauv(L, sizeof(*guard), 0);
    *guard = d;
    luaL_setmetatable(L, GUARD_MT);
    lua_setiuservalue(L, -2, UV_GUARD);
    lua_createtable(L, STMT_CACHE_SIZE, 0);
    lua_setiuservalue(L, -2, UV_SQL);

    int flags = readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    int rc = sqlite3_open_v2(path, &d->db, flags | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    /* Extended codes let code_name() tell constraint kinds apart from plain errors. */
    sqlite3_extended_result_codes(d->db, 1);
    sqlite3_busy_timeout(d->db, (int)busy_ms);
    d->busy_timeout_ms = (int)busy_ms;

    /* WAL is a property of the file: read-only connections can't switch it, and
     * in-memory/temp databases (empty filename) have no WAL at all. */
    const char *file = sqlite3_db_filename(d->db, "main");
    if (!readonly && file != NULL && file[0] != '\0') {
        sqlite3_stmt *st = NULL;
        rc = sqlite3_prepare_v2(d->db, "PRAGMA journal_mode=WAL", -1, &st, NULL);
        if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
            const char *mode = (const char *)sqlite3_column_text(st, 0);
            int is_wal = mode != NULL && sqlite3_stricmp(mode, "wal") == 0;
            sqlite3_finalize(st);
            if (!is_wal) {
                lua_pushnil(L);
                lua_pushliteral(L, "could not enable WAL journal mode");
                lua_pushliteral(L, "error");
                db_close(d);
                return 3;
            }
            rc = SQLITE_OK;
        } else {
            sqlite3_finalize(st);
            if (rc == SQLITE_DONE)
                rc = SQLITE_ERROR;
            goto fail;
        }
    }
    rc = sqlite3_exec(d->db, "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    return 1;

fail:
    push_error(L, d, rc); /* the message lives in the handle: copy it before closing */
    db_close(d);
    return 3;
}

/* ---- db methods ------------------------------------------------------------- */

static int l_sqlite_exec(lua_State *L)
{
    struct sqlite_db *d = check_db(L);
    const char *sql = luaL_checkstring(L, 2);
    /* NULL errmsg: the connection keeps the message, and nothing needs freeing if
     * pushing it raises. */
    int rc = sqlite3_exec(d->db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return push_error(L, d, rc);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_sqlite_query(lua_State *L)
{
    struct sqlite_db *d = check_db(L);
    int rc;
    sqlite3_stmt *st = stmt_acquire(L, d, &rc);
    if (st == NULL)
        return push_error(L, d, rc);
    int guard = guard_push(L);
    lua_createtable(L, 0, 0); /* row count unknown: let the array part grow */
    int rows = lua_gettop(L);

    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        /* Read after the first step: a schema change re-prepares and may change it. */
        int ncol = sqlite3_column_count(st);
        ensure_stack(L, d, ncol);
        /* Names pushed once per query, then copied per row with lua_pushvalue (no
         * string hashing or interning per row). */
        int names = lua_gettop(L) + 1;
        for (int c = 0; c < ncol; c++)
            push_column_name(L, st, c);
        lua_Integer n = 0;
        do {
            lua_createtable(L, 0, ncol);
            for (int c = 0; c < ncol; c++) {
                lua_pushvalue(L, names + c);
                push_column(L, st, c);
                lua_rawset(L, -3);
            }
            lua_rawseti(L, rows, ++n);
        } while ((rc = sqlite3_step(st)) == SQLITE_ROW);
    }
    stmt_release(d);
    if (rc != SQLITE_DONE)
        return push_error(L, d, rc);
    lua_settop(L, rows);
    lua_closeslot(L, guard);
    return 1;
}

static int l_sqlite_first(lua_State *L)
{
    struct sqlite_db *d = check_db(L);
    int rc;
    sqlite3_stmt *st = stmt_acquire(L, d, &rc);
    if (st == NULL)
        return push_error(L, d, rc);
    int guard = guard_push(L);

    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        int ncol = sqlite3_column_count(st);
        ensure_stack(L, d, ncol);
        lua_createtable(L, 0, ncol);
        for (int c = 0; c < ncol; c++) {
            push_column_name(L, st, c);
            push_column(L, st, c);
            lua_rawset(L, -3);
        }
        /* A writing statement (INSERT ... RETURNING) must run to completion so that
         * every row it touches is handled; a SELECT can simply stop here. */
        if (!sqlite3_stmt_readonly(st)) {
            rc = stmt_finish(d, st);
            if (rc != SQLITE_DONE)
                return push_error(L, d, rc);
        }
        stmt_release(d);
        lua_closeslot(L, guard);
        return 1;
    }
    stmt_release(d);
    if (rc != SQLITE_DONE)
        return push_error(L, d, rc);
    lua_pushnil(L);
    return 1;
}

static int l_sqlite_run(lua_State *L)
{
    struct sqlite_db *d = check_db(L);
    int rc;
    sqlite3_stmt *st = stmt_acquire(L, d, &rc);
    if (st == NULL)
        return push_error(L, d, rc);
    /* No guard needed: nothing below allocates Lua memory before the release. */
    sqlite3_int64 total_before = sqlite3_total_changes64(d->db);
    rc = stmt_finish(d, st);
    if (rc != SQLITE_DONE)
        return push_error(L, d, rc);
    /* sqlite3_changes keeps the count of the last INSERT/UPDATE/DELETE, which would
     * be stale for a SELECT or DDL: report 0 when nothing changed. */
    sqlite3_int64 changes = 0;
    if (sqlite3_total_changes64(d->db) != total_before)
        changes = sqlite3_changes64(d->db);
    lua_pushinteger(L, (lua_Integer)changes);
    lua_pushinteger(L, (lua_Integer)sqlite3_last_insert_rowid(d->db));
    return 2;
}

/* begin/commit/rollback go through the statement cache like any other SQL. */
static int run_tx(lua_State *L, const char *sql)
{
    lua_settop(L, 1);
    struct sqlite_db *d = check_db(L);
    lua_pushstring(L, sql); /* short string: interned, so the address fast path hits */
    int rc;
    sqlite3_stmt *st = stmt_acquire(L, d, &rc);
    if (st == NULL)
        return push_error(L, d, rc);
    rc = stmt_finish(d, st);
    if (rc != SQLITE_DONE)
        return push_error(L, d, rc);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_sqlite_begin(lua_State *L)
{
    /* IMMEDIATE: take the write lock now, where the busy timeout applies, instead of
     * failing with an unretryable SQLITE_BUSY when a read later upgrades. */
    return run_tx(L, "BEGIN IMMEDIATE");
}

static int l_sqlite_commit(lua_State *L)
{
    return run_tx(L, "COMMIT");
}

static int l_sqlite_rollback(lua_State *L)
{
    return run_tx(L, "ROLLBACK");
}

static int l_sqlite_busy_timeout(lua_State *L)
{
    struct sqlite_db *d = check_db(L);
    lua_Integer ms = luaL_checkinteger(L, 2);
    luaL_argcheck(L, ms >= 0 && ms <= INT_MAX, 2, "must be a non-negative integer");
    int previous = d->busy_timeout_ms;
    sqlite3_busy_timeout(d->db, (int)ms);
    d->busy_timeout_ms = (int)ms;
    lua_pushinteger(L, previous);
    return 1;
}

/* close, __close and __gc: idempotent, so an explicit close followed by scope exit
 * or collection is fine. */
static int l_sqlite_close(lua_State *L)
{
    struct sqlite_db *d = to_db(L);
    db_close(d);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_sqlite_tostring(lua_State *L)
{
    struct sqlite_db *d = to_db(L);
    if (d->db == NULL)
        lua_pushliteral(L, DB_MT " (closed)");
    else
        lua_pushfstring(L, DB_MT ": %p", (void *)d);
    return 1;
}

static int l_sqlite_guard_close(lua_State *L)
{
    struct sqlite_db **guard = luaL_checkudata(L, 1, GUARD_MT);
    stmt_release(*guard);
    return 0;
}

/* ---- registration ----------------------------------------------------------- */

static const luaL_Reg db_methods[] = {
    {"exec", l_sqlite_exec},         {"query", l_sqlite_query},
    {"first", l_sqlite_first},       {"run", l_sqlite_run},
    {"begin", l_sqlite_begin},       {"commit", l_sqlite_commit},
    {"rollback", l_sqlite_rollback}, {"busy_timeout", l_sqlite_busy_timeout},
    {"close", l_sqlite_close},       {NULL, NULL},
};

static const luaL_Reg db_metamethods[] = {
    {"__gc", l_sqlite_close},
    {"__close", l_sqlite_close},
    {"__tostring", l_sqlite_tostring},
    {NULL, NULL},
};

static const luaL_Reg module_functions[] = {
    {"open", l_sqlite_open},
    {NULL, NULL},
};

int host_open_sqlite(lua_State *L)
{
    if (luaL_newmetatable(L, DB_MT)) {
        lua_pushvalue(L, -1);
        luaL_setfuncs(L, db_metamethods, 1);
        lua_createtable(L, 0, sizeof(db_methods) / sizeof(db_methods[0]) - 1);
        lua_pushvalue(L, -2);
        luaL_setfuncs(L, db_methods, 1);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, GUARD_MT)) {
        lua_pushcfunction(L, l_sqlite_guard_close);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);

    luaL_newlib(L, module_functions);
    host_push_null(L);
    lua_setfield(L, -2, "null");
    return 1;
}
