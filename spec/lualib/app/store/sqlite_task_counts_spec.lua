-- The per-project task counts kept by triggers (db/sqlite/004_project_task_counts.sql):
-- after every write to tasks or projects, the kept task_count / completed_tasks /
-- active_tasks of every project must equal the count(*) subqueries the store used
-- to run, the store must return them as before (integers, same fields), and no task
-- write may move a project's updated_at.
local helper = require "support.helper"
local fake_host = helper.fake_host

local ALICE = "11111111-1111-4111-8111-111111111111"
local BOB = "22222222-2222-4222-8222-222222222222"
local STATUSES = { "pending", "running", "completed", "failed", "cancelled" }
local NULL = helper.core.json.null

-- What the store computed before 004, for every project.
local TRUTH_SQL = [[SELECT p.id, p.task_count, p.completed_tasks, p.active_tasks,
    (SELECT count(*) FROM tasks t WHERE t.project_id = p.id) AS want_task_count,
    (SELECT count(*) FROM tasks t WHERE t.project_id = p.id AND t.status = 'completed') AS want_completed_tasks,
    (SELECT count(*) FROM tasks t WHERE t.project_id = p.id AND t.status IN ('pending', 'running'))
        AS want_active_tasks
    FROM projects p ORDER BY p.id]]

local function read_file(path)
    local f = assert(io.open(path, "rb"))
    local s = f:read("a")
    f:close()
    return s
end

-- Asserts kept == computed for every project; `what` names the step on failure.
local function check_counts(db, what)
    local rows = assert(db:query(TRUTH_SQL))
    for _, r in ipairs(rows) do
        for _, field in ipairs({ "task_count", "completed_tasks", "active_tasks" }) do
            if r[field] ~= r["want_" .. field] or math.type(r[field]) ~= "integer" then
                error(string.format("%s: project %d %s is %s, count(*) says %s", what, r.id, field,
                    tostring(r[field]), tostring(r["want_" .. field])), 2)
            end
        end
    end
    return rows
end

describe("project task counts (sqlite triggers)", function()
    local host, ctl, store, json, db

    local function new_project(user, n)
        return assert(store:create_project(user, {
            name = "p" .. n, repo_url = "https://github.com/octo/p" .. n, repo_owner = "octo", repo_name = "p" .. n,
        }))
    end

    local function add_task(user, project_id, status)
        local _, id = assert(db:run("INSERT INTO tasks (user_id, project_id, status) VALUES (?, ?, ?)",
            user, project_id == nil and json.null or project_id, status))
        return id
    end

    local function updated_at_of_all()
        local out = {}
        for _, r in ipairs(assert(db:query("SELECT id, updated_at FROM projects"))) do out[r.id] = r.updated_at end
        return out
    end

    -- Kept counts right, and the store returns them (get and list) exactly like that.
    local function check(what)
        local rows = check_counts(db, what)
        local by_id = {}
        for _, user in ipairs({ ALICE, BOB }) do
            for _, p in ipairs(assert(store:list_projects(user))) do by_id[p.id] = p end
        end
        for _, r in ipairs(rows) do
            local listed = assert(by_id[r.id], what .. ": project " .. r.id .. " not listed")
            local got = assert(store:get_project(listed.user_id, r.id))
            for _, field in ipairs({ "task_count", "completed_tasks", "active_tasks" }) do
                assert.are.equal(r["want_" .. field], listed[field], what)
                assert.are.equal(r["want_" .. field], got[field], what)
                assert.are.equal("integer", math.type(got[field]), what)
            end
        end
    end

    before_each(function()
        host, ctl, store, db = helper.fresh_store({ { ALICE }, { BOB } })
        json = host.json
    end)

    after_each(function()
        db:close()
        ctl:cleanup()
    end)

    it("returns exactly the fields it returned before, counts as integers", function()
        local p = new_project(ALICE, 1)
        add_task(ALICE, p.id, "completed")
        add_task(ALICE, p.id, "running")
        local keys = {}
        for k in pairs(store:get_project(ALICE, p.id)) do keys[#keys + 1] = k end
        table.sort(keys)
        assert.are.same({ "active_tasks", "completed_tasks", "created_at", "description", "id", "is_active", "name",
            "repo_name", "repo_owner", "repo_url", "settings", "task_count", "updated_at", "user_id" }, keys)
        local got = store:list_projects(ALICE)[1]
        assert.are.equal(2, got.task_count)
        assert.are.equal(1, got.completed_tasks)
        assert.are.equal(1, got.active_tasks)
        assert.are.equal('{"active_tasks":1,"completed_tasks":1,"task_count":2}', json.encode({
            task_count = got.task_count, completed_tasks = got.completed_tasks, active_tasks = got.active_tasks }))
    end)

    it("follows every insert, status change, move and delete of a task", function()
        local a, b = new_project(ALICE, 1), new_project(ALICE, 2)
        local c = new_project(BOB, 3)
        local before = updated_at_of_all()
        local steps = 0
        for _, s0 in ipairs(STATUSES) do
            for _, s1 in ipairs(STATUSES) do
                local t = add_task(ALICE, a.id, s0)
                check("insert " .. s0)
                assert(db:run("UPDATE tasks SET status = ? WHERE id = ?", s1, t))
                check(s0 .. " -> " .. s1)
                assert(db:run("UPDATE tasks SET status = status WHERE id = ?", t))
                check("status set to itself")
                assert(db:run("UPDATE tasks SET project_id = ? WHERE id = ?", b.id, t))
                check("move a -> b as " .. s1)
                assert(db:run("UPDATE tasks SET project_id = ?, status = ? WHERE id = ?", c.id, s0, t))
                check("move b -> c and " .. s1 .. " -> " .. s0)
                assert(db:run("UPDATE tasks SET project_id = NULL WHERE id = ?", t))
                check("move c -> none")
                assert(db:run("UPDATE tasks SET status = ? WHERE id = ?", s1, t))
                check("status change without a project")
                assert(db:run("UPDATE tasks SET project_id = ?, status = ? WHERE id = ?", a.id, s0, t))
                check("move none -> a and " .. s1 .. " -> " .. s0)
                assert(db:run("UPDATE tasks SET project_id = ?, status = ? WHERE id = ?", a.id, s1, t))
                check("project set to itself and " .. s0 .. " -> " .. s1)
                assert(db:run("UPDATE tasks SET project_id = project_id, updated_at = 'x' WHERE id = ?", t))
                check("unrelated columns")
                if (steps % 2) == 0 then
                    assert(db:run("DELETE FROM tasks WHERE id = ?", t))
                    check("delete " .. s1)
                end
                steps = steps + 1
            end
        end
        add_task(ALICE, nil, "pending")
        check("insert without a project")
        assert(db:run("UPDATE tasks SET status = 'completed' WHERE project_id = ?", a.id))
        check("bulk status update")
        assert(db:run("UPDATE tasks SET project_id = ? WHERE project_id = ?", b.id, a.id))
        check("bulk move")
        assert(db:run("DELETE FROM tasks WHERE status = 'completed'"))
        check("bulk delete")
        assert.are.same(before, updated_at_of_all())
        assert(db:run("DELETE FROM tasks"))
        check("delete all")
        assert.are.same(before, updated_at_of_all())
    end)

    it("keeps the other projects right when a project (or its owner) is deleted", function()
        local a, b = new_project(ALICE, 1), new_project(ALICE, 2)
        local c = new_project(BOB, 3)
        for i = 1, 10 do
            add_task(ALICE, a.id, STATUSES[i % 5 + 1])
            add_task(ALICE, b.id, STATUSES[(i + 2) % 5 + 1])
            add_task(BOB, c.id, STATUSES[(i + 3) % 5 + 1])
        end
        check("set up")
        assert.is_true(store:delete_project(ALICE, a.id))
        check("delete project a")
        assert.are.equal(0, db:first("SELECT count(*) AS n FROM tasks WHERE project_id = ?", a.id).n)
        local d = new_project(ALICE, 4)
        assert.are.equal(0, d.task_count)
        add_task(ALICE, d.id, "running")
        check("new project after a delete")
        assert(db:run("DELETE FROM users WHERE id = ?", ALICE))
        check("delete the owner (cascades to projects and tasks)")
        assert.are.equal(1, #db:query("SELECT id FROM projects"))
    end)

    it("follows the engine's own writes (create, claim, finish, cancel, follow-up, recovery)", function()
        local a = new_project(ALICE, 1)
        local before = updated_at_of_all()
        local function create()
            local t = assert(store:create_task(ALICE, { project_id = a.id, repo_url = a.repo_url, branch = "main",
                agent = "shell", prompt = "echo hi", timestamp = 1.5 }))
            return t.id
        end
        local t1, t2, t3 = create(), create(), create()
        check("three created")
        local claimed = assert(store:claim_next("host-a", 30, 10, 10))
        assert.are.equal(t1, claimed.id)
        check("claimed")
        assert.is_true(store:finish_run(t1, "host-a", { status = "completed" }))
        check("completed")
        assert.are.equal("cancelled", store:request_cancel(ALICE, t2))
        check("pending cancelled")
        assert(store:start_followup(ALICE, t1, { role = "user", content = "again", timestamp = 2 }))
        check("follow-up re-queued")
        assert(store:claim_next("host-a", -1, 10, 10)) -- lease already expired
        check("claimed again")
        assert(store:recover_expired(5))
        check("recovered (re-queued)")
        local p = store:get_project(ALICE, a.id)
        assert.are.equal(3, p.task_count)
        assert.are.equal(0, p.completed_tasks)
        assert.are.equal(2, p.active_tasks)
        assert.is_not_nil(t3)
        assert.are.same(before, updated_at_of_all())
    end)

    it("matches count(*) after every step of a random sequence of writes", function()
        local seed = tonumber(os.getenv("COUNTS_SEED") or "") or os.time()
        math.randomseed(seed)
        local users = { ALICE, BOB }
        local projects, n = {}, 0
        local function add_project()
            n = n + 1
            local user = users[math.random(2)]
            projects[#projects + 1] = { id = new_project(user, n).id, user = user }
        end
        for _ = 1, 4 do add_project() end
        local function some_project()
            if math.random(6) == 1 then return nil end
            return projects[math.random(#projects)]
        end
        local function some_task()
            local rows = db:query("SELECT id FROM tasks ORDER BY random() LIMIT 1")
            return rows[1] and rows[1].id
        end
        local function status() return STATUSES[math.random(#STATUSES)] end
        for step = 1, 400 do
            local op = math.random(100)
            local what
            if op <= 30 then
                local p = some_project()
                add_task(p and p.user or ALICE, p and p.id, status())
                what = "insert"
            elseif op <= 50 then
                local t = some_task()
                if t then assert(db:run("UPDATE tasks SET status = ? WHERE id = ?", status(), t)) end
                what = "status"
            elseif op <= 62 then
                local t, p = some_task(), some_project()
                if t then assert(db:run("UPDATE tasks SET project_id = ? WHERE id = ?", p and p.id or json.null, t)) end
                what = "move"
            elseif op <= 70 then
                local t, p = some_task(), some_project()
                if t then
                    assert(db:run("UPDATE tasks SET project_id = ?, status = ? WHERE id = ?",
                        p and p.id or json.null, status(), t))
                end
                what = "move and status"
            elseif op <= 80 then
                local t = some_task()
                if t then assert(db:run("DELETE FROM tasks WHERE id = ?", t)) end
                what = "delete"
            elseif op <= 86 then
                assert(db:run("UPDATE tasks SET status = ? WHERE status = ?", status(), status()))
                what = "bulk status"
            elseif op <= 90 then
                assert(db:run("DELETE FROM tasks WHERE status = ? AND id % 3 = 0", status()))
                what = "bulk delete"
            elseif op <= 95 then
                -- several writes in one transaction, one of them rolled back
                assert(db:exec("BEGIN"))
                local p = some_project()
                add_task(ALICE, p and p.id, status())
                assert(db:exec("SAVEPOINT s"))
                local t = some_task()
                if t then assert(db:run("DELETE FROM tasks WHERE id = ?", t)) end
                assert(db:exec("ROLLBACK TO s"))
                assert(db:exec("COMMIT"))
                what = "transaction"
            elseif #projects > 1 then
                local i = math.random(#projects)
                assert.is_true(store:delete_project(projects[i].user, projects[i].id))
                table.remove(projects, i)
                add_project()
                what = "delete project"
            end
            if what then check_counts(db, string.format("seed %d step %d (%s)", seed, step, what)) end
        end
        check("end of the random sequence (seed " .. seed .. ")")
    end)

    it("never moves updated_at on a task write, and still does on an edit of the project", function()
        local p = new_project(ALICE, 1)
        assert(db:run("UPDATE projects SET updated_at = '2000-01-01T00:00:00.000Z' WHERE id = ?", p.id))
        local t = add_task(ALICE, p.id, "pending")
        assert(db:run("UPDATE tasks SET status = 'running' WHERE id = ?", t))
        assert(db:run("UPDATE tasks SET status = 'completed' WHERE id = ?", t))
        assert(db:run("DELETE FROM tasks WHERE id = ?", t))
        assert.are.equal("2000-01-01T00:00:00.000Z", store:get_project(ALICE, p.id).updated_at)
        -- A direct edit that does not set updated_at still moves it (001's trigger, kept).
        assert(db:run("UPDATE projects SET name = 'renamed' WHERE id = ?", p.id))
        assert.are_not.equal("2000-01-01T00:00:00.000Z", store:get_project(ALICE, p.id).updated_at)
        assert(db:run("UPDATE projects SET updated_at = '2000-01-01T00:00:00.000Z' WHERE id = ?", p.id))
        assert(db:run("UPDATE projects SET description = description WHERE id = ?", p.id))
        assert.are_not.equal("2000-01-01T00:00:00.000Z", store:get_project(ALICE, p.id).updated_at)
        -- And so does the store's update.
        assert(db:run("UPDATE projects SET updated_at = '2000-01-01T00:00:00.000Z' WHERE id = ?", p.id))
        assert.are_not.equal("2000-01-01T00:00:00.000Z",
            assert(store:update_project(ALICE, p.id, { name = "again" })).updated_at)
    end)

    it("cannot be written through the store's project create or update", function()
        local p = assert(store:create_project(ALICE, {
            name = "x", repo_url = "https://github.com/octo/x", repo_owner = "octo", repo_name = "x",
            task_count = 7, completed_tasks = 7, active_tasks = 7,
        }))
        assert.are.same({ 0, 0, 0 }, { p.task_count, p.completed_tasks, p.active_tasks })
        add_task(ALICE, p.id, "completed")
        local u = assert(store:update_project(ALICE, p.id, {
            name = "y", task_count = 99, completed_tasks = 99, active_tasks = 99,
        }))
        assert.are.equal("y", u.name)
        assert.are.same({ 1, 1, 0 }, { u.task_count, u.completed_tasks, u.active_tasks })
        check("after create and update with count fields")
    end)
end)

describe("PUT /api/projects/<id> with a count field", function()
    it("is refused like any other field that is not updatable", function()
        local _, ctl = helper.fresh_host()
        local store = require "app.store"
        local projects = require "routes.projects"
        assert(store:ensure_user(ALICE, {}))
        local p = assert(store:create_project(ALICE, {
            name = "x", repo_url = "https://github.com/octo/x", repo_owner = "octo", repo_name = "x",
        }))
        for _, field in ipairs({ "task_count", "completed_tasks", "active_tasks" }) do
            local r = helper.request({ method = "PUT", user_id = ALICE, params = { id = p.id },
                json = { [field] = 5 }, body = '{"' .. field .. '":5}' })
            local err = helper.catch(projects.update, r)
            assert.are.equal(400, err.status)
            assert.are.equal(0, store:get_project(ALICE, p.id)[field])
        end
        ctl:cleanup()
    end)
end)

describe("migration 004 on a database with tasks", function()
    -- Fills a database at 003 with users, projects (one without tasks) and tasks of
    -- every status, some without a project.
    local function populate(db)
        local statements = {
            "INSERT INTO users (id) VALUES ('" .. ALICE .. "'), ('" .. BOB .. "')",
        }
        for i = 1, 6 do
            statements[#statements + 1] = string.format([[INSERT INTO projects
                (user_id, repo_url, repo_name, repo_owner, name, updated_at)
                VALUES ('%s', 'https://github.com/o/r%d', 'r%d', 'o', 'r%d', '2001-01-0%dT00:00:00.000Z')]],
                i % 2 == 0 and ALICE or BOB, i, i, i, i)
        end
        assert(db:exec(table.concat(statements, ";")))
        math.randomseed(4)
        for i = 1, 200 do
            local project = math.random(7) -- 6 projects, 7 = none; project 5 gets none
            if project == 5 then project = 1 end
            assert(db:run("INSERT INTO tasks (user_id, project_id, status) VALUES (?, ?, ?)",
                i % 2 == 0 and ALICE or BOB, project <= 6 and project or NULL, STATUSES[math.random(5)]))
        end
    end

    local function pre_004()
        local files = {}
        for _, f in ipairs(fake_host.migrations()) do
            if not f:match("/004_") and f:match("/00[1-3]_") then files[#files + 1] = f end
        end
        assert.are.equal(3, #files)
        return files
    end

    local function verify(db)
        local rows = check_counts(db, "after 004")
        local total = 0
        for _, r in ipairs(rows) do total = total + r.task_count end
        assert.is_true(total > 100)
        for _, r in ipairs(rows) do
            if r.id == 5 then assert.are.equal(0, r.task_count) end
        end
        -- Backfilled without moving updated_at.
        for _, r in ipairs(assert(db:query("SELECT id, updated_at FROM projects"))) do
            assert.are.equal(string.format("2001-01-0%dT00:00:00.000Z", r.id), r.updated_at)
        end
        -- And kept from then on.
        assert(db:run("UPDATE tasks SET status = 'completed' WHERE id % 7 = 0"))
        assert(db:run("UPDATE tasks SET project_id = 5 WHERE id % 11 = 0"))
        assert(db:run("DELETE FROM tasks WHERE id % 13 = 0"))
        check_counts(db, "writes after 004")
    end

    it("backfills the counts when applied with the store's sqlite binding", function()
        local dir = fake_host.temp_dir()
        local db = assert(helper.core.sqlite.open(dir .. "/aicode.db"))
        for _, f in ipairs(pre_004()) do assert(db:exec(read_file(f))) end
        populate(db)
        assert(db:exec(read_file(helper.ROOT .. "/db/sqlite/004_project_task_counts.sql")))
        verify(db)
        db:close()
    end)

    it("backfills the counts when applied by `aicode migrate` (host/src/migrate.c)", function()
        local bin = helper.ROOT .. "/bin/aicode"
        if not io.open(bin, "rb") then
            pending("bin/aicode is not built")
            return
        end
        local dir = fake_host.temp_dir()
        local early = dir .. "/early/sqlite"
        assert(os.execute("mkdir -p '" .. early .. "' '" .. dir .. "/data'"))
        for _, f in ipairs(pre_004()) do
            local out = assert(io.open(early .. "/" .. f:match("[^/]+$"), "wb"))
            out:write(read_file(f))
            out:close()
        end
        local function migrate(db_dir)
            local cmd = string.format("env -i PATH=\"$PATH\" AICODE_DATA_DIR='%s/data' AICODE_DB_DIR='%s' " ..
                "AICODE_ENV_FILE='%s/no.env' LOG_FILE='%s/migrate.log' '%s' migrate >/dev/null 2>&1",
                dir, db_dir, dir, dir, bin)
            assert.is_true(os.execute(cmd))
        end
        migrate(dir .. "/early")
        local core = helper.core
        local db = assert(core.sqlite.open(dir .. "/data/aicode.db"))
        assert.is_nil(db:first("SELECT 1 AS x FROM pragma_table_info('projects') WHERE name = 'task_count'"))
        populate(db)
        db:close()
        migrate(helper.ROOT .. "/db")
        db = assert(core.sqlite.open(dir .. "/data/aicode.db"))
        assert.is_not_nil(db:first("SELECT 1 AS x FROM schema_migrations WHERE version = ?",
            "004_project_task_counts.sql"))
        verify(db)
        db:close()
    end)
end)
