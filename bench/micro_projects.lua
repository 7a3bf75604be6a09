-- In-process, single-threaded micro-benchmark of the authorized GET /api/projects
-- path (no HTTP, no wrk): the pieces the server runs per request, timed with
-- os.clock() (this process's CPU time) over the real C modules in
-- build/lua/host_core.so and a migrated SQLite database, via the spec helpers.
--
--   make -s all && lua5.4 bench/micro_projects.lua
--   PROJECTS=50 TASKS=0 ITER=2000 ROUNDS=7 lua5.4 bench/micro_projects.lua
--
-- PROJECTS projects for one user (shaped like bench/run.sh's), each with TASKS tasks
-- whose statuses cycle through all five values. Rows (µs per call, median of ROUNDS
-- rounds of ITER calls, plus the best round):
--   store:list_projects     the SQL query, row tables, settings/is_active fix-ups
--   json.encode(response)   the {"projects":[...],"status":"success"} body
--   jwt.verify              host.jwt.verify(token, "access") (C: HS256 + claims)
--   auth.authenticate       jwt verification (or the token cache) + store:get_user
--   app.server.handle       the whole Lua pipeline for the request: router, auth,
--                           rate limit off, handler, response.json (no socket, no log)
--   task insert+2 updates+del  one task's writes (pending, running, completed,
--                           deleted) in one transaction: the write-side cost
-- It also prints the response body's size and a SHA-256 of it, so two trees can be
-- checked for byte-identical output (the timestamps differ per run: compare with
-- FIXED_TIMES=1, which pins created_at/updated_at).
local function script_dir()
    local src = debug.getinfo(1, "S").source:gsub("^@", "")
    return src:match("^(.*)/[^/]*$") or "."
end
package.path = script_dir() .. "/../spec/?.lua;" .. package.path
local helper = require "support.helper"

local PROJECTS = tonumber(os.getenv("PROJECTS") or "50")
local TASKS = tonumber(os.getenv("TASKS") or "0")
local ITER = tonumber(os.getenv("ITER") or "2000")
local ROUNDS = tonumber(os.getenv("ROUNDS") or "7")
local ONLY = os.getenv("ONLY") -- a row name substring, to time one row

local USER = "0b6f5c1e-8a1d-4c3e-9f2a-3d4e5f60718a"

local host, ctl = helper.fresh_host({ env = { RATE_LIMIT_PER_MINUTE = "0", RATE_LIMIT_IP_PER_MINUTE = "0" } })
local json = host.json
local store = require "app.store"
local auth = require "app.auth"
assert(store:ensure_user(USER, {}))

local db = assert(host.sqlite.open(ctl.db_path))
local ids = {}
for i = 1, PROJECTS do
    ids[i] = assert(store:create_project(USER, {
        name = "bench project " .. i, repo_url = "https://github.com/bench-org/repo-" .. i,
        repo_owner = "bench-org", repo_name = "repo-" .. i,
        description = "Benchmark project number " .. i .. ", created by bench/run.sh",
    })).id
end
-- Before the tasks, so that a task write which moved a project's updated_at would
-- show in the body's checksum.
if os.getenv("FIXED_TIMES") == "1" then
    assert(db:run("UPDATE projects SET created_at = printf('2026-01-01T00:00:%02d.000Z', id), " ..
        "updated_at = '2026-01-02T00:00:00.000Z'"))
end
local statuses = { "pending", "running", "completed", "failed", "cancelled" }
for i = 1, PROJECTS do
    for t = 1, TASKS do
        local _, task = assert(db:run("INSERT INTO tasks (user_id, project_id, status) VALUES (?, ?, ?)",
            USER, ids[i], statuses[(t - 1) % #statuses + 1]))
        -- and a status change, as the engine makes them
        if t % 3 == 0 then assert(db:run("UPDATE tasks SET status = 'completed' WHERE id = ?", task)) end
    end
end

local token = host.jwt.issue(USER, "access")
local req_proto = {
    method = "GET", path = "/api/projects", query = nil,
    headers = { authorization = "Bearer " .. token, accept = "application/json" },
}
local server = require "app.server"
local function request()
    local r = helper.request(req_proto)
    r.headers = req_proto.headers
    return r
end

-- Sanity: the whole pipeline answers 200 with PROJECTS rows.
local res = server.handle(request())
assert(res.status == 200, "status " .. tostring(res.status) .. ": " .. tostring(res.body))
local body = json.decode(res.body)
assert(#body.projects == PROJECTS, "listed " .. #body.projects)

local function sha256_hex(s)
    return (helper.sha256(s):gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function time(name, fn)
    if ONLY and not name:find(ONLY, 1, true) then return end
    for _ = 1, math.max(10, ITER // 20) do fn() end -- warm-up
    local samples = {}
    for r = 1, ROUNDS do
        collectgarbage("collect")
        local t0 = os.clock()
        for _ = 1, ITER do fn() end
        samples[r] = (os.clock() - t0) / ITER * 1e6
    end
    table.sort(samples)
    print(string.format("%-24s %9.2f µs  (best %.2f)", name, samples[(ROUNDS + 1) // 2], samples[1]))
end

local list_body = { status = "success", projects = store:list_projects(USER) }
print(string.format("projects=%d tasks/project=%d iter=%d rounds=%d  body %d bytes sha256 %s",
    PROJECTS, TASKS, ITER, ROUNDS, #res.body, sha256_hex(res.body)))
time("store:list_projects", function() store:list_projects(USER) end)
time("json.encode(response)", function() json.encode(list_body) end)
time("jwt.verify", function() host.jwt.verify(token, "access") end)
time("auth.authenticate", function() auth.authenticate(token) end)
time("app.server.handle", function() server.handle(request()) end)
-- The write side: what a task's life costs in SQL (the triggers of
-- db/sqlite/004_project_task_counts.sql fire on each statement), in one transaction.
local first_project = ids[1]
time("task insert+2 updates+del", function()
    assert(db:exec("BEGIN"))
    local _, task = assert(db:run("INSERT INTO tasks (user_id, project_id, status) VALUES (?, ?, 'pending')",
        USER, first_project))
    assert(db:run("UPDATE tasks SET status = 'running' WHERE id = ?", task))
    assert(db:run("UPDATE tasks SET status = 'completed' WHERE id = ?", task))
    assert(db:run("DELETE FROM tasks WHERE id = ?", task))
    assert(db:exec("COMMIT"))
end)

db:close()
ctl:cleanup()
