-- app.store (SQLite backend) against a real temporary database migrated with
-- db/sqlite/*.sql through host_core's sqlite binding.
local helper = require "support.helper"

local ALICE = "11111111-1111-4111-8111-111111111111"
local BOB = "22222222-2222-4222-8222-222222222222"

describe("app.store (sqlite)", function()
    local host, ctl, store, json, db

    local function new_project(user, fields)
        local f = {
            name = "hello", repo_url = "https://github.com/octo/hello", repo_owner = "octo",
            repo_name = "hello", description = "", settings = nil, is_active = nil,
        }
        for k, v in pairs(fields or {}) do f[k] = v end
        return store:create_project(user, f)
    end

    local function add_task(user, project_id, status, extra)
        local cols, vals, args = { "user_id", "project_id", "status" }, { "?", "?", "?" }, { user, project_id, status }
        for k, v in pairs(extra or {}) do
            cols[#cols + 1] = k
            vals[#vals + 1] = "?"
            args[#args + 1] = v
        end
        local _, id = assert(db:run("INSERT INTO tasks (" .. table.concat(cols, ", ") .. ") VALUES (" ..
            table.concat(vals, ", ") .. ")", table.unpack(args)))
        return id
    end

    before_each(function()
        host, ctl, store, db = helper.fresh_store({ { ALICE, { email = "alice@example.com" } }, { BOB } })
        json = host.json
    end)

    after_each(function()
        db:close()
        ctl:cleanup()
    end)

    it("is the sqlite backend by default", function()
        assert.are.equal(require "app.store.sqlite", store)
    end)

    describe("ping", function()
        it("answers true for a healthy database", function()
            assert.are.same({ true }, { store:ping() })
        end)

        it("reports a database whose write lock another connection holds, without hanging", function()
            local other = assert(host.sqlite.open(ctl.db_path))
            assert(other:exec("BEGIN IMMEDIATE"))
            local started = os.clock()
            local ok, err = store:ping()
            assert(other:exec("ROLLBACK"))
            other:close()
            assert.is_nil(ok)
            assert.is_string(err)
            assert.is_true(os.clock() - started < 2)
            assert.are.same({ true }, { store:ping() }) -- and recovers
        end)
    end)

    describe("users", function()
        it("ensure_user creates once, then returns the existing row", function()
            local id = "33333333-3333-4333-8333-333333333333"
            local user, created = store:ensure_user(id, { email = "c@example.com" })
            assert.are.equal(id, user.id)
            assert.are.equal("c@example.com", user.email)
            assert.is_true(created)
            local again, created2 = store:ensure_user(id, { email = "other@example.com" })
            assert.is_false(created2)
            assert.are.equal("c@example.com", again.email) -- not overwritten
        end)

        it("stores a missing email as NULL", function()
            assert.are.equal(json.null, store:get_user(BOB).email)
        end)

        it("get_user returns the row, or nil with no error for an unknown id", function()
            local user = store:get_user(ALICE)
            assert.are.equal(ALICE, user.id)
            assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", user.created_at)
            assert.are.same({ nil }, { store:get_user("44444444-4444-4444-8444-444444444444") })
        end)
    end)

    describe("projects", function()
        it("create_project returns the full row with decoded columns", function()
            local p = assert(new_project(ALICE, { description = "d", settings = { theme = "dark" } }))
            assert.are.equal("integer", math.type(p.id))
            assert.are.equal(ALICE, p.user_id)
            assert.are.equal("https://github.com/octo/hello", p.repo_url)
            assert.are.equal("octo", p.repo_owner)
            assert.are.equal("hello", p.repo_name)
            assert.are.equal("hello", p.name)
            assert.are.equal("d", p.description)
            assert.is_true(p.is_active)
            assert.are.same("dark", p.settings.theme)
            assert.are.equal(0, p.task_count)
            assert.are.equal(0, p.completed_tasks)
            assert.are.equal(0, p.active_tasks)
            assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", p.created_at)
            assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", p.updated_at)
        end)

        it("defaults settings to an empty object that encodes as {}", function()
            local p = assert(new_project(ALICE))
            assert.are.equal("{}", json.encode(p.settings))
            assert.is_false(json.is_array(p.settings))
        end)

        it("stores is_active = false as the boolean false", function()
            local p = assert(new_project(ALICE, { is_active = false }))
            assert.is_false(p.is_active)
            assert.are.equal(0, db:first("SELECT is_active FROM projects WHERE id = ?", p.id).is_active)
        end)

        it("answers conflict for a duplicate (user, repo_url)", function()
            assert(new_project(ALICE))
            assert.are.same({ nil, "conflict" }, { new_project(ALICE, { name = "again" }) })
        end)

        -- store/init.lua: only a *uniqueness* conflict is reported as "conflict".
        it("reports a violated foreign key (owner row missing) as a store error, not a conflict", function()
            local res, err = store:create_project("55555555-5555-4555-8555-555555555555", {
                name = "x", repo_url = "https://github.com/octo/x", repo_owner = "octo", repo_name = "x",
            })
            assert.is_nil(res)
            assert.is_string(err)
            assert.are_not.equal("conflict", err)
        end)

        it("lets two users own the same repository", function()
            assert(new_project(ALICE))
            local p = assert(new_project(BOB))
            assert.are.equal(BOB, p.user_id)
        end)

        it("list_projects returns only the owner's rows, newest first, as a JSON array", function()
            local empty = store:list_projects(ALICE)
            assert.are.equal("[]", json.encode(empty))
            local a1 = new_project(ALICE, { repo_url = "https://github.com/octo/one", name = "one" })
            local a2 = new_project(ALICE, { repo_url = "https://github.com/octo/two", name = "two" })
            new_project(BOB, { repo_url = "https://github.com/octo/bob" })
            local rows = store:list_projects(ALICE)
            assert.is_true(json.is_array(rows))
            assert.are.equal(2, #rows)
            assert.are.equal(a2.id, rows[1].id)
            assert.are.equal(a1.id, rows[2].id)
            assert.is_true(rows[1].is_active)
            assert.are.equal("{}", json.encode(rows[1].settings))
        end)

        it("get_project scopes to the owner", function()
            local p = assert(new_project(ALICE))
            assert.are.equal(p.id, store:get_project(ALICE, p.id).id)
            assert.are.same({ nil }, { store:get_project(BOB, p.id) })
            assert.are.same({ nil }, { store:get_project(ALICE, p.id + 1000) })
        end)

        it("update_project changes the given columns and decodes the result", function()
            local p = assert(new_project(ALICE))
            local u = assert(store:update_project(ALICE, p.id, {
                name = "renamed", description = "new", settings = { a = json.array {} }, is_active = false,
                repo_url = "https://github.com/other/repo", repo_owner = "other", repo_name = "repo",
            }))
            assert.are.equal("renamed", u.name)
            assert.are.equal("new", u.description)
            assert.is_false(u.is_active)
            assert.are.equal('{"a":[]}', json.encode(u.settings))
            assert.are.equal("other", u.repo_owner)
            assert.are.equal("repo", u.repo_name)
            assert.is_true(u.updated_at >= p.updated_at)
            assert.are.equal(p.created_at, u.created_at)
        end)

        it("update_project leaves columns that are not given alone", function()
            local p = assert(new_project(ALICE, { description = "keep" }))
            local u = assert(store:update_project(ALICE, p.id, { name = "renamed" }))
            assert.are.equal("keep", u.description)
            assert.are.equal(p.repo_url, u.repo_url)
            assert.is_true(u.is_active)
        end)

        it("update_project of another user's project returns nil and changes nothing", function()
            local p = assert(new_project(ALICE))
            assert.are.same({ nil }, { store:update_project(BOB, p.id, { name = "stolen" }) })
            assert.are.equal("hello", store:get_project(ALICE, p.id).name)
        end)

        it("update_project answers conflict when repo_url collides", function()
            assert(new_project(ALICE, { repo_url = "https://github.com/octo/one" }))
            local p2 = assert(new_project(ALICE, { repo_url = "https://github.com/octo/two" }))
            assert.are.same({ nil, "conflict" },
                { store:update_project(ALICE, p2.id, { repo_url = "https://github.com/octo/one" }) })
        end)

        it("delete_project deletes only the owner's project", function()
            local p = assert(new_project(ALICE))
            assert.is_false(store:delete_project(BOB, p.id))
            assert.is_not_nil(store:get_project(ALICE, p.id))
            assert.is_true(store:delete_project(ALICE, p.id))
            assert.is_nil(store:get_project(ALICE, p.id))
            assert.is_false(store:delete_project(ALICE, p.id))
        end)

        it("delete_project cascades to the project's tasks", function()
            local p = assert(new_project(ALICE))
            add_task(ALICE, p.id, "pending")
            assert.is_true(store:delete_project(ALICE, p.id))
            assert.are.equal(0, db:first("SELECT count(*) AS n FROM tasks").n)
        end)
    end)

    describe("task counts and project tasks", function()
        it("counts all, completed and active (pending + running) tasks", function()
            local p = assert(new_project(ALICE))
            for _, s in ipairs({ "completed", "completed", "pending", "running", "failed", "cancelled" }) do
                add_task(ALICE, p.id, s)
            end
            local other = assert(new_project(ALICE, { repo_url = "https://github.com/octo/other" }))
            add_task(ALICE, other.id, "running")
            local got = store:get_project(ALICE, p.id)
            assert.are.equal(6, got.task_count)
            assert.are.equal(2, got.completed_tasks)
            assert.are.equal(2, got.active_tasks)
            assert.are.equal("integer", math.type(got.task_count))
            local listed = store:list_projects(ALICE)
            local by_id = {}
            for _, row in ipairs(listed) do by_id[row.id] = row end
            assert.are.equal(6, by_id[p.id].task_count)
            assert.are.equal(1, by_id[other.id].task_count)
            assert.are.equal(1, by_id[other.id].active_tasks)
        end)

        it("list_project_tasks returns the owner's tasks with JSON columns decoded", function()
            local p = assert(new_project(ALICE))
            local t1 = add_task(ALICE, p.id, "completed", {
                changed_files = '["a.lua","b/c.lua"]',
                chat_messages = '[{"role":"user","content":"hi","timestamp":1.5}]',
                execution_metadata = '{"file_changes":[]}',
            })
            local t2 = add_task(ALICE, p.id, "pending")
            local tasks = store:list_project_tasks(ALICE, p.id)
            assert.is_true(json.is_array(tasks))
            assert.are.equal(2, #tasks)
            assert.are.equal(t2, tasks[1].id) -- newest first
            assert.are.equal(t1, tasks[2].id)
            assert.are.same({ "a.lua", "b/c.lua" }, { tasks[2].changed_files[1], tasks[2].changed_files[2] })
            assert.are.equal("hi", tasks[2].chat_messages[1].content)
            assert.are.equal('{"file_changes":[]}', json.encode(tasks[2].execution_metadata))
            assert.are.equal("[]", json.encode(tasks[1].changed_files))
            assert.are.equal("[]", json.encode(tasks[1].chat_messages))
            assert.are.equal("{}", json.encode(tasks[1].execution_metadata))
            assert.are.equal("main", tasks[1].target_branch)
            assert.are.equal(json.null, tasks[1].pr_url)
        end)

        it("falls back to the column default when stored JSON is invalid", function()
            local p = assert(new_project(ALICE))
            add_task(ALICE, p.id, "failed", { changed_files = "not json", execution_metadata = "{" })
            local t = store:list_project_tasks(ALICE, p.id)[1]
            assert.are.equal("[]", json.encode(t.changed_files))
            assert.are.equal("{}", json.encode(t.execution_metadata))
        end)

        it("list_project_tasks scopes to the owner", function()
            local p = assert(new_project(ALICE))
            add_task(ALICE, p.id, "pending")
            local none = store:list_project_tasks(BOB, p.id)
            assert.are.equal(0, #none)
            assert.are.equal("[]", json.encode(none))
        end)
    end)
end)

describe("app.store (sqlite) without a usable database", function()
    local store

    setup(function()
        local dir = helper.fake_host.temp_dir()
        helper.fresh_host({ data_dir = dir .. "/missing/subdir" })
        store = require "app.store"
    end)

    it("reports failures as nil, err instead of raising", function()
        local ok, err = store:ping()
        assert.is_nil(ok)
        assert.matches("^cannot open database", err)
        for _, call in ipairs({
            function() return store:get_user(ALICE) end,
            function() return store:ensure_user(ALICE, {}) end,
            function() return store:list_projects(ALICE) end,
            function() return store:get_project(ALICE, 1) end,
            function() return store:create_project(ALICE, { name = "x" }) end,
            function() return store:update_project(ALICE, 1, { name = "x" }) end,
            function() return store:delete_project(ALICE, 1) end,
            function() return store:list_project_tasks(ALICE, 1) end,
        }) do
            local res, e = call()
            assert.is_nil(res)
            assert.matches("^cannot open database", e)
        end
    end)
end)
