/*
 * Unit tests for host.sqlite (host/src/l_sqlite.c).
 *
 * The checks are written in Lua, as the handlers use the module, and report through
 * a C `ok` so the TAP output comes from tap.h. Everything happens in a mkdtemp
 * directory that is removed at the end. One extra state runs with a capped
 * allocator to prove that a Lua memory error in the middle of a query does not
 * leave the statement (and its write lock) open.
 */
#define _POSIX_C_SOURCE 200809L

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "host/common.h"
#include "host/sqlite.h"

#include "tap.h"

static int l_ok(lua_State *L)
{
    ok(lua_toboolean(L, 1), "%s", luaL_optstring(L, 2, "(unnamed)"));
    return 0;
}

static int l_now_ms(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushinteger(L, (lua_Integer)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
    return 1;
}

/* Checks from C that a value is the very sentinel of host/common.h. */
static int l_is_host_null(lua_State *L)
{
    lua_pushboolean(L, host_is_null(L, 1));
    return 1;
}

/* Allocator with a movable cap, for the out-of-memory test. */
static size_t mem_used, mem_limit = SIZE_MAX;

static void *limited_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    size_t old = ptr != NULL ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        mem_used -= old;
        return NULL;
    }
    if (nsize > old && mem_used - old + nsize > mem_limit)
        return NULL;
    void *p = realloc(ptr, nsize);
    if (p != NULL)
        mem_used = mem_used - old + nsize;
    return p;
}

static int l_set_mem_limit(lua_State *L)
{
    mem_limit = lua_isnoneornil(L, 1) ? SIZE_MAX : mem_used + (size_t)luaL_checkinteger(L, 1);
    return 0;
}

static void setup(lua_State *L, const char *dir)
{
    luaL_openlibs(L);
    host_open_sqlite(L);
    lua_setglobal(L, "sqlite");
    lua_pushstring(L, dir);
    lua_setglobal(L, "DIR");
    lua_register(L, "ok", l_ok);
    lua_register(L, "now_ms", l_now_ms);
    lua_register(L, "is_host_null", l_is_host_null);
    lua_register(L, "set_mem_limit", l_set_mem_limit);
}

static void run_script(lua_State *L, const char *name, const char *src)
{
    if (luaL_loadbuffer(L, src, strlen(src), name) != LUA_OK || lua_pcall(L, 0, 0, 0) != LUA_OK) {
        ok(0, "%s ran without error: %s", name, lua_tostring(L, -1));
        lua_pop(L, 1);
    }
}

static const char *main_script =
    /* ---- open, pragmas, schema ---- */
    "local path = DIR .. '/test.db'\n"
    "local db, err = sqlite.open(path)\n"
    "ok(db ~= nil, 'open in a temp dir ' .. tostring(err))\n"
    "ok(tostring(db):match('^host.sqlite.db: '), 'tostring names the type')\n"
    "ok(db:first('PRAGMA journal_mode').journal_mode == 'wal', 'WAL mode active')\n"
    "ok(db:first('PRAGMA synchronous').synchronous == 1, 'synchronous=NORMAL')\n"
    "ok(db:first('PRAGMA foreign_keys').foreign_keys == 1, 'foreign_keys=ON')\n"
    "ok(db:busy_timeout(5000) == 5000, 'default busy timeout is 5000 ms')\n"
    "ok(db:exec([[CREATE TABLE t(id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB,\n"
    "                            n TEXT);\n"
    "            CREATE TABLE u(name TEXT UNIQUE NOT NULL);\n"
    "            CREATE TABLE c(k INTEGER PRIMARY KEY, v TEXT)]]) == true,\n"
    "   'exec runs several statements')\n"
    "ok(sqlite.null ~= nil and is_host_null(sqlite.null), 'sqlite.null is the shared sentinel')\n"
    /* ---- run / query types ---- */
    "local ins = 'INSERT INTO t(i, r, s, b, n) VALUES (?, ?, ?, CAST(? AS BLOB), ?)'\n"
    "local changes, rowid = db:run(ins, 42, 1.5, 'h\\u{e9}', 'a\\0b', nil)\n"
    "ok(changes == 1 and rowid == 1, 'run returns changes and last_insert_rowid')\n"
    "ok(math.type(changes) == 'integer' and math.type(rowid) == 'integer',\n"
    "   'run results are integers')\n"
    "changes, rowid = db:run(ins, math.maxinteger, 2.0, '', '', sqlite.null)\n"
    "ok(changes == 1 and rowid == 2, 'second insert gets rowid 2')\n"
    "local rows = db:query('SELECT i, r, s, b, n, typeof(b) AS tb FROM t ORDER BY id')\n"
    "ok(type(rows) == 'table' and #rows == 2, 'query returns a sequence of rows')\n"
    "local r1, r2 = rows[1], rows[2]\n"
    "ok(r1.i == 42 and math.type(r1.i) == 'integer', 'INTEGER stays a Lua integer')\n"
    "ok(r1.r == 1.5 and math.type(r1.r) == 'float', 'REAL is a float')\n"
    "ok(r2.r == 2.0 and math.type(r2.r) == 'float', 'whole REAL stays a float')\n"
    "ok(r1.s == 'h\\u{e9}', 'TEXT round-trips UTF-8')\n"
    "ok(r1.b == 'a\\0b' and #r1.b == 3 and r1.tb == 'blob', 'BLOB with a NUL byte round-trips')\n"
    "ok(r2.i == math.maxinteger, 'int64 max round-trips exactly')\n"
    "ok(r2.s == '' and r2.b == '' and r2.tb == 'blob',\n"
    "   'empty TEXT and empty BLOB are empty strings')\n"
    "ok(r1.n == sqlite.null and rawequal(r1.n, sqlite.null) and is_host_null(r1.n),\n"
    "   'NULL is the sentinel (nil param)')\n"
    "ok(r2.n == sqlite.null, 'NULL is the sentinel (sqlite.null param)')\n"
    "local keys = 0\n"
    "for _ in pairs(r1) do keys = keys + 1 end\n"
    "ok(keys == 6, 'NULL columns keep their key')\n"
    "local blob = db:first([[SELECT X'00FF00' AS b]])\n"
    "ok(blob.b == '\\0\\255\\0', 'BLOB literal with NUL bytes')\n"
    "ok(#db:query('SELECT * FROM t WHERE id < 0') == 0, 'empty result is an empty table')\n"
    /* ---- parameter binding ---- */
    "local p = db:first([[SELECT ? AS i, typeof(?) AS ti, ? AS f, typeof(?) AS tf, ? AS s,\n"
    "                           ? AS t, ? AS fa, ? AS n, ? AS nn, ? AS mi]],\n"
    "                   -7, -7, 0.25, 0.25, 'x\\0y', true, false, nil, sqlite.null,\n"
    "                   math.mininteger)\n"
    "ok(p.i == -7 and p.ti == 'integer', 'integer param binds as INTEGER')\n"
    "ok(p.f == 0.25 and p.tf == 'real', 'float param binds as REAL')\n"
    "ok(p.s == 'x\\0y', 'string param binds with embedded NUL')\n"
    "ok(p.t == 1 and p.fa == 0 and math.type(p.t) == 'integer', 'booleans bind as 1/0')\n"
    "ok(p.n == sqlite.null and p.nn == sqlite.null, 'nil and sqlite.null bind as NULL')\n"
    "ok(p.mi == math.mininteger, 'int64 min round-trips')\n"
    "ok(db:first('SELECT typeof(?) AS t', '12').t == 'text', 'numeric string binds as TEXT')\n"
    "local okc, e = pcall(db.query, db, 'SELECT ?', {})\n"
    "ok(not okc and tostring(e):match('cannot bind a table'),\n"
    "   'table param raises: ' .. tostring(e))\n"
    "okc, e = pcall(db.run, db, 'SELECT ?', print)\n"
    "ok(not okc and tostring(e):match('cannot bind a function'), 'function param raises')\n"
    "okc, e = pcall(db.first, db, 'SELECT ?', io.stdout)\n"
    "ok(not okc, 'full userdata param raises')\n"
    "okc, e = pcall(db.query, db, 'SELECT ?, ?', 1)\n"
    "ok(not okc and tostring(e):match('expects 2'), 'too few params raise')\n"
    "okc, e = pcall(db.query, db, 'SELECT ?', 1, 2)\n"
    "ok(not okc, 'too many params raise')\n"
    "do\n"
    "  local marks, args = {}, {}\n"
    "  for k = 1, 64 do marks[k] = '?'; args[k] = k end\n"
    "  local sql = 'SELECT ' .. table.concat(marks, ' + ') .. ' AS s'\n"
    "  ok(db:first(sql, table.unpack(args)).s == 64 * 65 // 2, '64 params bind')\n"
    "  args[65] = 65\n"
    "  okc, e = pcall(db.first, db, sql .. ' + ?', table.unpack(args))\n"
    "  ok(not okc and tostring(e):match('too many SQL parameters'), 'more than 64 params raise')\n"
    "end\n"
    "ok(db:first('SELECT ? AS v', 5).v == 5, 'statement usable after a binding error')\n"
    /* ---- errors ---- */
    "ok(db:run('INSERT INTO u(name) VALUES (?)', 'ann') == 1, 'unique insert')\n"
    "local res, msg, code = db:run('INSERT INTO u(name) VALUES (?)', 'ann')\n"
    "ok(res == nil and code == 'unique' and msg:match('UNIQUE'),\n"
    "   'UNIQUE violation -> unique: ' .. tostring(msg))\n"
    "res, msg, code = db:run('INSERT INTO u(name) VALUES (?)', nil)\n"
    "ok(res == nil and code == 'constraint' and msg:match('NOT NULL'), 'NOT NULL -> constraint')\n"
    "res, msg, code = db:query('SELEC 1')\n"
    "ok(res == nil and type(msg) == 'string' and msg:match('syntax') and code == 'error',\n"
    "   'syntax error -> nil, err, error')\n"
    "res, msg, code = db:first('SELECT * FROM missing')\n"
    "ok(res == nil and msg:match('no such table') and code == 'error',\n"
    "   'missing table -> nil, err')\n"
    "res, msg, code = db:exec('CREATE TABLE x(; ')\n"
    "ok(res == nil and type(msg) == 'string' and code == 'error', 'exec error -> nil, err, code')\n"
    "okc, e = pcall(db.query, db, 'SELECT 1; SELECT 2')\n"
    "ok(not okc and tostring(e):match('only one SQL statement'), 'trailing SQL in query raises')\n"
    "okc, e = pcall(db.run, db, 'DELETE FROM c; DROP TABLE c')\n"
    "ok(not okc, 'trailing SQL in run raises')\n"
    "ok(db:first('SELECT count(*) AS n FROM sqlite_schema WHERE name = ?', 'c').n == 1,\n"
    "   'trailing statement was not executed')\n"
    "ok(db:first('SELECT 3 AS x; -- trailing comment\\n').x == 3, 'trailing comment is fine')\n"
    "okc, e = pcall(db.query, db, '  ')\n"
    "ok(not okc and tostring(e):match('empty SQL'), 'empty SQL raises')\n"
    "okc, e = pcall(db.query, db, 'SELECT 1\\0 junk')\n"
    "ok(not okc and tostring(e):match('NUL'), 'SQL with NUL raises')\n"
    /* ---- first ---- */
    "local row = db:first('SELECT id, i FROM t WHERE id = ?', 1)\n"
    "ok(row and row.id == 1 and row.i == 42, 'first returns the row')\n"
    "ok(select('#', db:first('SELECT id FROM t WHERE id = ?', 999)) == 1 and\n"
    "   db:first('SELECT id FROM t WHERE id = ?', 999) == nil,\n"
    "   'first returns a single nil without row')\n"
    "row = db:first([[INSERT INTO c(k, v) VALUES (-1, 'a'), (-2, 'b') RETURNING k]])\n"
    "ok(row and (row.k == -1 or row.k == -2), 'first with RETURNING returns a row')\n"
    "ok(db:first('SELECT count(*) AS n FROM c WHERE k < 0').n == 2,\n"
    "   'first ran RETURNING to the end')\n"
    "ok(db:run('DELETE FROM c WHERE k < 0') == 2, 'run reports changes of DELETE')\n"
    "ok(db:run('SELECT 1') == 0, 'run of a SELECT reports 0 changes')\n"
    "ok(db:run('CREATE TABLE IF NOT EXISTS z(a)') == 0, 'run of DDL reports 0 changes')\n"
    /* ---- transactions ---- */
    "local function count(tbl) return db:first('SELECT count(*) AS n FROM ' .. tbl).n end\n"
    "local before = count('u')\n"
    "ok(db:begin() == true, 'begin')\n"
    "db:run('INSERT INTO u(name) VALUES (?)', 'bob')\n"
    "ok(count('u') == before + 1, 'insert visible inside the transaction')\n"
    "ok(db:rollback() == true and count('u') == before, 'rollback discards')\n"
    "db:begin(); db:run('INSERT INTO u(name) VALUES (?)', 'cy')\n"
    "ok(db:commit() == true and count('u') == before + 1, 'commit keeps')\n"
    "res, msg, code = db:commit()\n"
    "ok(res == nil and code == 'error' and type(msg) == 'string',\n"
    "   'commit without begin -> nil, err')\n"
    "db:begin()\n"
    "res, msg, code = db:begin()\n"
    "ok(res == nil and msg:match('within a transaction'), 'nested begin -> nil, err')\n"
    "db:rollback()\n"
    /* ---- statement cache ---- */
    "do\n"
    "  local good = true\n"
    "  db:begin()\n"
    "  for k = 1, 10000 do\n"
    "    local n, id = db:run('INSERT INTO c(k, v) VALUES (?, ?)', k, 'v' .. k)\n"
    "    if n ~= 1 or id ~= k then good = false end\n"
    "  end\n"
    "  db:commit()\n"
    "  ok(good, 'cached INSERT run 10000 times')\n"
    "  good = true\n"
    "  for k = 1, 10000 do\n"
    "    local r = db:first('SELECT v FROM c WHERE k = ?', k)\n"
    "    if not r or r.v ~= 'v' .. k then good = false end\n"
    "  end\n"
    "  ok(good, 'cached SELECT run 10000 times with correct rows')\n"
    "  good = true\n"
    "  for k = 1, 2000 do\n"
    /*   Equal text in fresh (long, non-interned) strings: the hash path. */
    "    local sql = table.concat({'SELECT v FROM c WHERE k = ?', string.rep(' ', 40)})\n"
    "    local r = db:first(sql, k)\n"
    "    if not r or r.v ~= 'v' .. k then good = false end\n"
    "  end\n"
    "  ok(good, 'equal SQL in different strings hits the cache')\n"
    "  good = true\n"
    "  for round = 1, 3 do\n"
    "    for q = 1, 150 do\n"
    "      local r = db:first('SELECT ? + ' .. q .. ' AS s', round)\n"
    "      if not r or r.s ~= round + q then good = false end\n"
    "    end\n"
    "  end\n"
    "  ok(good, 'more distinct statements than cache slots (eviction)')\n"
    "  ok(#db:query('SELECT k FROM c WHERE k BETWEEN ? AND ?', 10, 19) == 10, 'range query')\n"
    "  db:exec('CREATE TABLE sc(a); INSERT INTO sc VALUES (1)')\n"
    "  local r = db:query('SELECT * FROM sc')[1]\n"
    "  db:exec('ALTER TABLE sc ADD COLUMN b DEFAULT 7')\n"
    "  r = db:query('SELECT * FROM sc')[1]\n"
    "  ok(r.a == 1 and r.b == 7, 'cached SELECT * sees a schema change')\n"
    "end\n"
    /* ---- two connections: WAL readers and busy writers ---- */
    "local db2 = assert(sqlite.open(path))\n"
    "local base = count('c')\n"
    "ok(db2:begin() == true, 'second connection takes the write lock')\n"
    "db2:run('INSERT INTO c(k, v) VALUES (?, ?)', -100, 'uncommitted')\n"
    "ok(count('c') == base, 'reader is not blocked by the writer and sees committed data (WAL)')\n"
    "ok(db:busy_timeout(50) == 5000, 'busy_timeout returns the previous value')\n"
    "local t0 = now_ms()\n"
    "res, msg, code = db:run('INSERT INTO c(k, v) VALUES (?, ?)', -200, 'blocked')\n"
    "local took = now_ms() - t0\n"
    "ok(res == nil and code == 'busy', 'write while locked -> busy: ' .. tostring(msg))\n"
    "ok(took >= 40 and took < 1500, 'busy after about the timeout (' .. took .. ' ms)')\n"
    "res, msg, code = db:begin()\n"
    "ok(res == nil and code == 'busy', 'begin while locked -> busy')\n"
    "ok(db2:commit() == true, 'second connection commits')\n"
    "ok(count('c') == base + 1, 'first connection sees the commit')\n"
    "ok(db:run('INSERT INTO c(k, v) VALUES (?, ?)', -200, 'ok') == 1, 'write works after unlock')\n"
    "ok(db:busy_timeout(5000) == 50, 'busy_timeout restored')\n"
    "ok(db2:close() == true and db2:close() == true, 'close is idempotent')\n"
    /* ---- options ---- */
    "local ro = assert(sqlite.open(path, {readonly = true}))\n"
    "ok(ro:first('SELECT count(*) AS n FROM c').n == base + 2, 'read-only connection reads')\n"
    "res, msg, code = ro:run('INSERT INTO c(k, v) VALUES (?, ?)', -300, 'no')\n"
    "ok(res == nil and code == 'readonly', 'write on read-only -> readonly: ' .. tostring(msg))\n"
    "ro:close()\n"
    "res, msg, code = sqlite.open(DIR .. '/missing.db', {readonly = true})\n"
    "ok(res == nil and type(msg) == 'string' and code == 'error',\n"
    "   'read-only open of missing file')\n"
    "res, msg = sqlite.open(DIR .. '/no/such/dir/x.db')\n"
    "ok(res == nil and type(msg) == 'string', 'open in a missing dir -> nil, err')\n"
    "local bt = assert(sqlite.open(path, {busy_timeout_ms = 123}))\n"
    "ok(bt:busy_timeout(0) == 123, 'opts.busy_timeout_ms')\n"
    "bt:close()\n"
    "ok(not pcall(sqlite.open, path, {busy_timeout_ms = -1}), 'negative busy timeout raises')\n"
    "local mem = assert(sqlite.open(':memory:'))\n"
    "ok(mem:first('SELECT 1 AS one').one == 1, ':memory: opens')\n"
    "mem:close()\n"
    /* ---- <close>, gc, closed use ---- */
    "db:busy_timeout(0)\n"
    "local kept\n"
    "do\n"
    "  local d <close> = assert(sqlite.open(path))\n"
    "  kept = d\n"
    "  d:begin(); d:run('INSERT INTO c(k, v) VALUES (?, ?)', -400, 'tbc')\n"
    "end\n"
    "ok(db:begin() == true, '<close> closed the db and released its lock')\n"
    "db:rollback()\n"
    "ok(tostring(kept):match('closed'), 'tostring of a closed db')\n"
    "ok(db:first('SELECT count(*) AS n FROM c WHERE k = -400').n == 0, 'close rolled back')\n"
    "do\n"
    "  local d = assert(sqlite.open(path))\n"
    "  d:begin(); d:run('INSERT INTO c(k, v) VALUES (?, ?)', -500, 'gc')\n"
    "  d:first('SELECT 1 AS x')\n"
    "end\n"
    "collectgarbage(); collectgarbage()\n"
    "ok(db:begin() == true, 'gc closed the db and released its lock')\n"
    "db:rollback()\n"
    "for _, m in ipairs({'exec', 'query', 'first', 'run', 'begin', 'commit', 'rollback'}) do\n"
    "  okc, e = pcall(kept[m], kept, 'SELECT 1')\n"
    "  ok(not okc and tostring(e):match('database is closed'), m .. ' on a closed db raises')\n"
    "end\n"
    "okc, e = pcall(kept.busy_timeout, kept, 1)\n"
    "ok(not okc and tostring(e):match('database is closed'),\n"
    "   'busy_timeout on a closed db raises')\n"
    "okc, e = pcall(db.query, {}, 'SELECT 1')\n"
    "ok(not okc and tostring(e):match('host.sqlite.db expected'), 'wrong self raises')\n"
    "okc, e = pcall(db.query, db)\n"
    "ok(not okc, 'missing SQL raises')\n"
    "db:close()\n";

/* Runs in a state whose allocator is capped while a query builds its rows. */
static const char *oom_script =
    "local path = DIR .. '/test.db'\n"
    "local db = assert(sqlite.open(path))\n"
    "local other = assert(sqlite.open(path, {busy_timeout_ms = 0}))\n"
    "db:exec('CREATE TABLE big(v TEXT)')\n"
    "local sql = [[WITH RECURSIVE s(i) AS\n"
    "                (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 20000)\n"
    "              INSERT INTO big(v) SELECT printf('%0100d', i) FROM s WHERE true RETURNING v]]\n"
    "collectgarbage()\n"
    "set_mem_limit(256 * 1024)\n"
    "local okc, e = pcall(db.query, db, sql)\n"
    "set_mem_limit(nil)\n"
    "ok(not okc and tostring(e):match('not enough memory'), 'memory error raised mid-query')\n"
    "local res, msg = other:begin()\n"
    "ok(res == true, 'statement was reset during unwinding: write lock free ' .. tostring(msg))\n"
    "if res then other:rollback() end\n"
    "ok(db:first('SELECT 1 AS x').x == 1, 'connection usable after the memory error')\n"
    "local r = db:query('SELECT count(*) AS n FROM big')\n"
    "ok(r and r[1].n >= 0, 'cache still sane after the memory error')\n"
    "collectgarbage()\n"
    "set_mem_limit(64 * 1024)\n"
    "okc, e = pcall(db.query, db, 'SELECT v, v AS w FROM big')\n"
    "set_mem_limit(nil)\n"
    "local rows = other:query('SELECT count(*) AS n FROM big')\n"
    "if rows[1].n > 0 then\n"
    "  ok(not okc, 'memory error while reading rows')\n"
    "  ok(other:begin() == true, 'no lock left after the failed read')\n"
    "  other:rollback()\n"
    "  local cp = other:first('PRAGMA wal_checkpoint(TRUNCATE)')\n"
    "  ok(cp and cp.busy == 0, 'no read snapshot left: checkpoint completes')\n"
    "end\n"
    "db:close(); other:close()\n";

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d != NULL) {
        struct dirent *e;
        char path[4096];
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
            unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

int main(void)
{
    char dir[] = "/tmp/test_sqlite.XXXXXX";
    ok(mkdtemp(dir) != NULL, "mkdtemp");

    lua_State *L = luaL_newstate();
    ok(host_open_sqlite(L) == 1 && lua_istable(L, -1), "host_open_sqlite pushes a table");
    lua_getfield(L, -1, "null");
    ok(host_is_null(L, -1), "module null is host_push_null's sentinel");
    lua_pop(L, 2);
    setup(L, dir);
    run_script(L, "main", main_script);
    lua_close(L);

    L = lua_newstate(limited_alloc, NULL);
    setup(L, dir);
    run_script(L, "oom", oom_script);
    lua_close(L);
    mem_limit = SIZE_MAX;

    remove_dir(dir);
    return tap_done();
}
