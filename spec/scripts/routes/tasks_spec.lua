-- scripts/routes/tasks.lua called directly with request tables as app.server passes
-- them (user_id set by auth, params from the router, json the decoded body,
-- query_params the parsed query). The store is the real SQLite one; the engine does
-- not run, so task states are set in the database.
local helper = require "support.helper"

local ALICE = "11111111-1111-4111-8111-111111111111"
local BOB = "22222222-2222-4222-8222-222222222222"
local REPO = "https://github.com/octo/hello"

describe("routes.tasks", function()
    local host, ctl, json, tasks, store, db

    before_each(function()
        host, ctl, store, db = helper.fresh_store({ { ALICE }, { BOB } })
        json = host.json
        tasks = require "routes.tasks"
    end)

    after_each(function()
        db:close()
        ctl:cleanup()
    end)

    -- A request whose body went through host.json like a real one.
    local function req(user, t)
        t = t or {}
        return helper.with_body(helper.request({ method = t.method or "GET", user_id = user,
            params = t.params or {}, headers = t.headers or {}, query_params = t.query or {} }), t.body)
    end

    local call, rejects = helper.call, helper.rejects

    local function start(user, fields, headers)
        local body = { prompt = "echo hi", repo_url = REPO, model = "shell" }
        for k, v in pairs(fields or {}) do body[k] = v end
        local status, res = call(tasks.start, req(user, { method = "POST", body = body, headers = headers }))
        assert.are.equal(200, status)
        return res.task_id
    end

    local function set_task(id, fields)
        local sets, args = {}, {}
        for k, v in pairs(fields) do
            sets[#sets + 1] = k .. " = ?"
            args[#args + 1] = v
        end
        args[#args + 1] = id
        assert(db:run("UPDATE tasks SET " .. table.concat(sets, ", ") .. " WHERE id = ?", table.unpack(args)))
    end

    local function events_of(id)
        return assert(db:query("SELECT type, data FROM task_events WHERE task_id = ? ORDER BY id", id))
    end

    describe("POST /api/start-task", function()
        local function start_rejects(message, body, headers)
            rejects(400, message, tasks.start, req(ALICE, { method = "POST", body = body, headers = headers }))
        end

        local function with(fields)
            local body = { prompt = "echo hi", repo_url = REPO, model = "shell" }
            for k, v in pairs(fields) do body[k] = v end
            return body
        end

        it("queues a pending task with the original's response", function()
            local status, res = call(tasks.start, req(ALICE, { method = "POST", body = with({}) }))
            assert.are.equal(200, status)
            assert.are.same({ status = "success", task_id = res.task_id, message = "Task started successfully" }, res)
            local t = assert(store:get_task(ALICE, res.task_id))
            assert.are.equal("pending", t.status)
            assert.are.equal("main", t.target_branch)
            assert.are.equal("shell", t.agent)
            assert.are.equal(REPO, t.repo_url)
            assert.are.equal(1, #t.chat_messages)
            assert.are.equal("user", t.chat_messages[1].role)
            assert.are.equal("echo hi", t.chat_messages[1].content)
            assert.matches("^%d%d%d%d%-%d%d%-%d%dT", t.chat_messages[1].timestamp)
            local events = events_of(res.task_id)
            assert.are.equal(1, #events)
            assert.are.equal("status", events[1].type)
            assert.are.same({ status = "pending" }, json.decode(events[1].data))
        end)

        it("keeps the GitHub token in the vault only (24 h), never in the row", function()
            local id = start(ALICE, { github_token = "ghp_secret" })
            assert.are.equal("ghp_secret", ctl.vault["github_token:" .. id].value)
            assert.are.equal(24 * 3600, ctl.vault["github_token:" .. id].ttl)
            local row = assert(db:first("SELECT * FROM tasks WHERE id = ?", id))
            for k, v in pairs(row) do
                assert.is_falsy(type(v) == "string" and v:find("ghp_secret", 1, true), k)
            end
            local plain = start(ALICE, { github_token = "" })
            assert.is_nil(ctl.vault["github_token:" .. plain])
        end)

        it("answers the same task for a repeated Idempotency-Key, without a second event or token", function()
            local key = { ["idempotency-key"] = "abc" }
            local id = start(ALICE, { github_token = "first" }, key)
            local again = start(ALICE, { prompt = "different", github_token = "second" }, key)
            assert.are.equal(id, again)
            assert.are.equal("first", ctl.vault["github_token:" .. id].value)
            assert.are.equal(1, #events_of(id))
            assert.are.equal(1, db:first("SELECT count(*) AS n FROM tasks").n)
            -- Keys are per user.
            assert.are_not.equal(id, start(BOB, {}, key))
        end)

        it("rejects a bad Idempotency-Key", function()
            start_rejects("Idempotency-Key is invalid", with({}), { ["idempotency-key"] = string.rep("k", 201) })
            start_rejects("Idempotency-Key is invalid", with({}), { ["idempotency-key"] = "a\nb" })
        end)

        it("requires a non-empty object body", function()
            rejects(400, "No data provided", tasks.start, req(ALICE, { method = "POST" }))
            start_rejects("No data provided", {})
            start_rejects("No data provided", json.array { 1 })
            start_rejects("No data provided", "text")
        end)

        it("requires prompt and repo_url", function()
            local msg = "prompt and repo_url are required"
            start_rejects(msg, { repo_url = REPO })
            start_rejects(msg, { prompt = "x" })
            start_rejects(msg, with({ prompt = " \n\t" }))
            start_rejects(msg, with({ repo_url = "" }))
            start_rejects(msg, with({ prompt = json.null }))
        end)

        it("checks types, lengths and UTF-8", function()
            start_rejects("prompt must be a string", with({ prompt = 1 }))
            start_rejects("repo_url must be a string", with({ repo_url = { "x" } }))
            start_rejects("prompt must be at most 102400 bytes", with({ prompt = string.rep("a", 102401) }))
            local bad_utf8 = req(ALICE, { method = "POST" })
            bad_utf8.json = with({ prompt = "\255" }) -- host.json would refuse to encode it
            rejects(400, "prompt must be valid UTF-8", tasks.start, bad_utf8)
            start_rejects("branch must be a string", with({ branch = true }))
            start_rejects("model must be a string", with({ model = 1 }))
            start_rejects("github_token must be a string", with({ github_token = 1 }))
            start_rejects("github_token must be at most 1000 bytes", with({ github_token = string.rep("a", 1001) }))
            assert.are.equal(102400, #assert(store:get_task(ALICE, start(ALICE, { prompt = string.rep("a", 102400) })))
                .chat_messages[1].content)
        end)

        it("validates repo_url with app.git's rules", function()
            start_rejects("repo_url must be an https URL", with({ repo_url = "http://github.com/octo/hello" }))
            start_rejects("repo_url must be an https URL", with({ repo_url = "git@github.com:octo/hello.git" }))
            start_rejects("repo_url must not contain credentials", with({ repo_url = "https://t@github.com/o/r" }))
            start_rejects("repo_url host is not allowed (GIT_ALLOWED_HOSTS)",
                with({ repo_url = "https://evil.example/o/r" }))
            start_rejects("repo_url must be at most 300 bytes", with({ repo_url = string.rep("a", 301) }))
        end)

        it("validates the branch and defaults it to main", function()
            start_rejects("branch is not a valid git branch name", with({ branch = "a..b" }))
            start_rejects("branch is not a valid git branch name", with({ branch = "-x" }))
            start_rejects("branch is not a valid git branch name", with({ branch = "" }))
            local id = start(ALICE, { branch = "feature/x" })
            assert.are.equal("feature/x", store:get_task(ALICE, id).target_branch)
            id = start(ALICE, { branch = json.null })
            assert.are.equal("main", store:get_task(ALICE, id).target_branch)
        end)

        it("accepts only registered agents as model, naming them; the default is claude", function()
            start_rejects("model must be one of: claude, codex, shell", with({ model = "gpt" }))
            local status, res = call(tasks.start, req(ALICE, { method = "POST", body = {
                prompt = "x", repo_url = REPO } }))
            assert.are.equal(200, status)
            assert.are.equal("claude", store:get_task(ALICE, res.task_id).agent)
        end)

        it("rejects a GitHub token with whitespace or control characters", function()
            start_rejects("github_token contains invalid characters", with({ github_token = "a b" }))
            start_rejects("github_token contains invalid characters", with({ github_token = "a\nb" }))
        end)

        it("requires project_id to be one of the caller's projects", function()
            local p = assert(store:create_project(ALICE, { name = "n", repo_url = REPO, repo_owner = "octo",
                repo_name = "hello" }))
            start_rejects("project_id must be an integer", with({ project_id = "1" }))
            start_rejects("project_id must be an integer", with({ project_id = 1.5 }))
            rejects(404, "Project not found", tasks.start, req(BOB, { method = "POST", body = with({
                project_id = p.id }) }))
            rejects(404, "Project not found", tasks.start, req(ALICE, { method = "POST", body = with({
                project_id = 999999 }) }))
            local id = start(ALICE, { project_id = p.id })
            assert.are.equal(p.id, store:get_task(ALICE, id).project_id)
        end)

        it("answers 503 when the store fails, without the driver's text", function()
            stub(store, "create_task").returns(nil, "disk I/O error")
            rejects(503, "Database unavailable", tasks.start, req(ALICE, { method = "POST", body = with({}) }))
            store.create_task:revert()
        end)
    end)

    describe("GET /api/task-status/<id>, /api/tasks/<id>, /api/git-diff/<id>", function()
        it("answer the original's task-status fields", function()
            local id = start(ALICE, { branch = "dev" })
            local status, res = call(tasks.status, req(ALICE, { params = { id = id } }))
            assert.are.equal(200, status)
            local t = res.task
            assert.are.equal(id, t.id)
            assert.are.equal("pending", t.status)
            assert.are.equal("echo hi", t.prompt)
            assert.are.equal(REPO, t.repo_url)
            assert.are.equal("dev", t.branch)
            assert.are.equal("shell", t.model)
            assert.are.same({}, t.changed_files)
            for _, k in ipairs({ "commit_hash", "error", "project_id", "started_at", "completed_at", "pr_url",
                "pr_number" }) do
                assert.are.equal(json.null, t[k], k)
            end
        end)

        it("are owner-scoped (another user's task is a 404)", function()
            local id = start(ALICE)
            for _, fn in ipairs({ tasks.status, tasks.get, tasks.diff, tasks.events_token, tasks.events }) do
                rejects(404, "Task not found", fn, req(BOB, { params = { id = id } }))
                rejects(404, "Task not found", fn, req(ALICE, { params = { id = 999999 } }))
            end
        end)

        it("GET /api/tasks/<id> answers the full row, git-diff its diff", function()
            local id = start(ALICE)
            set_task(id, { git_diff = "diff --git a/x b/x\n", git_patch = "From x" })
            local _, res = call(tasks.get, req(ALICE, { params = { id = id } }))
            assert.are.equal("From x", res.task.git_patch)
            assert.is_nil(res.task.lease_owner)
            assert.is_nil(res.task.idempotency_key)
            local _, diff = call(tasks.diff, req(ALICE, { params = { id = id } }))
            assert.are.same({ status = "success", git_diff = "diff --git a/x b/x\n", task_id = id }, diff)
        end)

        it("answer 503 when the store fails", function()
            stub(store, "get_task").returns(nil, "database is locked")
            rejects(503, "Database unavailable", tasks.status, req(ALICE, { params = { id = 1 } }))
            store.get_task:revert()
        end)
    end)

    describe("GET /api/tasks", function()
        local function list(user, query)
            local status, res, text = call(tasks.list, req(user, { query = query }))
            assert.are.equal(200, status)
            return res, text
        end

        it("answers an empty map as {}", function()
            local _, text = list(ALICE, {})
            assert.are.equal('{"status":"success","tasks":{},"total_tasks":0}', text)
        end)

        it("maps the caller's tasks by id string, with the original's fields", function()
            local id = start(ALICE)
            start(BOB)
            set_task(id, { git_patch = "From x" })
            local res = list(ALICE, {})
            assert.are.equal(1, res.total_tasks)
            local t = res.tasks[tostring(id)]
            assert.are.same({ "agent", "chat_messages", "created_at", "has_patch", "id", "project_id", "prompt",
                "repo_url", "status" }, (function()
                    local keys = {}
                    for k in pairs(t) do keys[#keys + 1] = k end
                    table.sort(keys)
                    return keys
                end)())
            assert.is_true(t.has_patch)
            assert.are.equal("shell", t.agent)
        end)

        it("cuts the prompt to 50 characters (not bytes) plus ...", function()
            local long = string.rep("é", 60)
            local id = start(ALICE, { prompt = long })
            local short = start(ALICE, { prompt = string.rep("a", 50) })
            local res = list(ALICE, {})
            assert.are.equal(string.rep("é", 50) .. "...", res.tasks[tostring(id)].prompt)
            assert.are.equal(string.rep("a", 50), res.tasks[tostring(short)].prompt)
        end)

        it("filters by status and project, pages with limit and offset; total_tasks ignores the page", function()
            local p = assert(store:create_project(ALICE, { name = "n", repo_url = REPO, repo_owner = "octo",
                repo_name = "hello" }))
            local a = start(ALICE, { project_id = p.id })
            local b = start(ALICE)
            local c = start(ALICE)
            set_task(c, { status = "completed" })
            local res = list(ALICE, { status = "completed" })
            assert.are.same({ tostring(c) }, (function()
                local keys = {}
                for k in pairs(res.tasks) do keys[#keys + 1] = k end
                return keys
            end)())
            res = list(ALICE, { project_id = tostring(p.id) })
            assert.is_table(res.tasks[tostring(a)])
            assert.is_nil(res.tasks[tostring(b)])
            -- As the original: a project_id that is not a positive integer is ignored.
            assert.are.equal(3, list(ALICE, { project_id = "abc" }).total_tasks)
            assert.are.equal(3, list(ALICE, { project_id = "0" }).total_tasks)
            res = list(ALICE, { limit = "1", offset = "1" })
            assert.are.equal(3, res.total_tasks)
            local n = 0
            for _ in pairs(res.tasks) do n = n + 1 end
            assert.are.equal(1, n)
            assert.are.equal(3, list(ALICE, { limit = "", offset = "" }).total_tasks)
        end)

        it("rejects out-of-range limit and offset and unknown statuses", function()
            local function bad(message, query) rejects(400, message, tasks.list, req(ALICE, { query = query })) end
            bad("limit must be an integer between 1 and 500", { limit = "0" })
            bad("limit must be an integer between 1 and 500", { limit = "501" })
            bad("limit must be an integer between 1 and 500", { limit = "1.5" })
            bad("limit must be an integer between 1 and 500", { limit = "x" })
            bad("offset must be an integer between 0 and 1000000000", { offset = "-1" })
            bad("status must be one of pending, running, completed, failed, cancelled", { status = "done" })
        end)

        it("answers 503 when the store fails", function()
            stub(store, "list_tasks").returns(nil, "database is locked")
            rejects(503, "Database unavailable", tasks.list, req(ALICE, {}))
            store.list_tasks:revert()
        end)
    end)

    describe("POST /api/tasks/<id>/chat", function()
        local function chat(user, id, body)
            return req(user, { method = "POST", params = { id = id }, body = body })
        end

        it("validates the body before looking the task up", function()
            rejects(400, "No data provided", tasks.chat, chat(ALICE, 999999, nil))
            rejects(400, "No data provided", tasks.chat, chat(ALICE, 999999, {}))
            rejects(400, "content is required", tasks.chat, chat(ALICE, 999999, { role = "user" }))
            rejects(400, "content is required", tasks.chat, chat(ALICE, 999999, { content = "  " }))
            rejects(400, "content must be a string", tasks.chat, chat(ALICE, 999999, { content = 5 }))
            rejects(400, "role must be \"user\": assistant messages come from the agent", tasks.chat,
                chat(ALICE, 999999, { content = "x", role = "assistant" }))
            rejects(400, "github_token contains invalid characters", tasks.chat,
                chat(ALICE, 999999, { content = "x", github_token = "a b" }))
            rejects(404, "Task not found", tasks.chat, chat(ALICE, 999999, { content = "x" }))
        end)

        it("is a 409 while the task is pending or running, a 404 for another user's task", function()
            local id = start(ALICE)
            local msg = "The task is still running; wait for it to finish or cancel it"
            rejects(409, msg, tasks.chat, chat(ALICE, id, { content = "more" }))
            set_task(id, { status = "running" })
            rejects(409, msg, tasks.chat, chat(ALICE, id, { content = "more" }))
            set_task(id, { status = "completed" })
            rejects(404, "Task not found", tasks.chat, chat(BOB, id, { content = "more" }))
        end)

        it("appends the message and queues a finished task again", function()
            for _, final in ipairs({ "completed", "failed", "cancelled" }) do
                local id = start(ALICE)
                set_task(id, { status = final, error = "x", completed_at = "2026-01-01T00:00:00.000Z" })
                local status, res = call(tasks.chat, chat(ALICE, id, { content = "more", github_token = "ghp_2" }))
                assert.are.equal(200, status)
                assert.are.equal("pending", res.task.status)
                assert.are.equal(json.null, res.task.error)
                assert.are.equal(json.null, res.task.completed_at)
                assert.are.equal(2, #res.task.chat_messages)
                assert.are.same({ "user", "more" }, { res.task.chat_messages[2].role,
                    res.task.chat_messages[2].content })
                assert.are.equal("ghp_2", ctl.vault["github_token:" .. id].value)
                local events = events_of(id)
                assert.are.same({ status = "pending", followup = true }, json.decode(events[#events].data))
            end
        end)

        -- A running task whose cancel was requested, then whose lease expired (its host
        -- died), is cancelled by lease recovery. A follow-up must be claimable again.
        it("queues a follow-up that the engine can claim after a cancel finished by lease recovery", function()
            local id = start(ALICE)
            set_task(id, { status = "running", cancel_requested = 1, lease_owner = "dead-host",
                lease_until = host.now() - 10 })
            assert.are.same({ { id = id, action = "cancelled", container_id = json.null } },
                store:recover_expired(2))
            assert.are.equal("cancelled", store:task_status(id))
            call(tasks.chat, chat(ALICE, id, { content = "try again" }))
            local claimed = store:claim_next("engine", 30, 4, 2)
            assert.is_table(claimed, "the follow-up stays pending forever: cancel_requested is still set")
            assert.are.equal(id, claimed.id)
        end)
    end)

    describe("POST /api/tasks/<id>/cancel", function()
        local function cancel(user, id) return req(user, { method = "POST", params = { id = id } }) end

        it("cancels a pending task at once", function()
            local id = start(ALICE)
            local status, res = call(tasks.cancel, cancel(ALICE, id))
            assert.are.equal(200, status)
            assert.are.same({ status = "success", task_id = id, task_status = "cancelled" }, res)
            assert.are.equal("cancelled", store:task_status(id))
            local events = events_of(id)
            assert.are.same({ status = "cancelled" }, json.decode(events[#events].data))
        end)

        it("asks the engine to stop a running task", function()
            local id = start(ALICE)
            set_task(id, { status = "running" })
            local _, res = call(tasks.cancel, cancel(ALICE, id))
            assert.are.equal("cancelling", res.task_status)
            local status, requested = store:task_status(id)
            assert.are.equal("running", status)
            assert.is_true(requested)
        end)

        it("is a 409 for a finished task and a 404 for an unknown or foreign one", function()
            local id = start(ALICE)
            for _, final in ipairs({ "completed", "failed", "cancelled" }) do
                set_task(id, { status = final })
                rejects(409, "The task has already finished", tasks.cancel, cancel(ALICE, id))
            end
            rejects(404, "Task not found", tasks.cancel, cancel(BOB, id))
            rejects(404, "Task not found", tasks.cancel, cancel(ALICE, 999999))
        end)
    end)

    describe("POST /api/tasks/<id>/events-token", function()
        it("issues a 5-minute stream token scoped to the task", function()
            local id = start(ALICE)
            local status, res = call(tasks.events_token, req(ALICE, { method = "POST", params = { id = id } }))
            assert.are.equal(200, status)
            assert.are.equal(300, res.expires_in)
            local claims = assert(host.jwt.verify(res.token, "stream"))
            assert.are.equal(ALICE, claims.user_id)
            assert.are.equal("task:" .. id, claims.scope)
            assert.is_nil(host.jwt.verify(res.token, "access"))
        end)
    end)

    describe("GET /api/tasks/<id>/events", function()
        local function open(user, id, headers, query)
            local res = tasks.events(req(user, { params = { id = id }, headers = headers, query = query }))
            assert.are.equal(200, res.status)
            assert.are.equal("text/event-stream", res.headers["content-type"])
            assert.are.equal("no-cache", res.headers["cache-control"])
            assert.are.equal("no", res.headers["x-accel-buffering"])
            local chunks = {}
            res.stream(function(chunk) chunks[#chunks + 1] = chunk end)
            return table.concat(chunks)
        end

        local function frames(text)
            local out = {}
            for frame in text:gmatch("(.-)\n\n") do out[#out + 1] = frame end
            return out
        end

        it("replays the history, then ends with an end event once the task has finished", function()
            local id = start(ALICE)
            local step = assert(store:add_event(id, "step", { name = "clone", state = "started" }))
            set_task(id, { status = "completed" })
            local text = open(ALICE, id)
            local f = frames(text)
            assert.are.equal(": connected\nretry: 2000", f[1])
            assert.matches("^id: %d+\nevent: status\ndata: {", f[2])
            local data = json.decode(f[3]:match("\ndata: (.*)$"))
            assert.are.same({ id = step, type = "step", data = { name = "clone", state = "started" },
                created_at = data.created_at }, data)
            assert.are.equal("id: " .. step .. "\nevent: step", f[3]:match("^(.-)\ndata"))
            assert.are.equal('event: end\ndata: {"status":"completed"}', f[4])
            assert.are.equal(4, #f)
        end)

        it("resumes after Last-Event-ID, or last_event_id when there is no header", function()
            local id = start(ALICE)
            local a = assert(store:add_event(id, "output", { stream = "stdout", text = "a" }))
            assert(store:add_event(id, "output", { stream = "stdout", text = "b" }))
            set_task(id, { status = "failed" })
            local text = open(ALICE, id, { ["last-event-id"] = tostring(a) })
            assert.is_nil(text:find('"text":"a"', 1, true))
            assert.is_truthy(text:find('"text":"b"', 1, true))
            text = open(ALICE, id, {}, { last_event_id = tostring(a) })
            assert.is_nil(text:find('"text":"a"', 1, true))
            text = open(ALICE, id, { ["last-event-id"] = tostring(a) }, { last_event_id = "0" })
            assert.is_nil(text:find('"text":"a"', 1, true))
            -- Not a number: the whole history.
            text = open(ALICE, id, { ["last-event-id"] = "x" })
            assert.is_truthy(text:find('"text":"a"', 1, true))
            assert.matches('event: end\ndata: {"status":"failed"}\n\n$', text)
        end)

        it("sends keep-alive comments while a task waits, and closes after 30 minutes without end", function()
            local id = start(ALICE)
            local text = open(ALICE, id, {}, {})
            local keepalives = select(2, text:gsub(": keep%-alive\n\n", ""))
            assert.are.equal(30 * 60 / 15, keepalives)
            assert.is_nil(text:find("event: end", 1, true))
        end)

        -- The end event reports the task's final status; a task deleted while a client
        -- follows it (its project was deleted) must not be reported as status "nil".
        it("does not report a vanished task's status as \"nil\"", function()
            local id = start(ALICE)
            local res = tasks.events(req(ALICE, { params = { id = id } }))
            assert(db:run("DELETE FROM tasks WHERE id = ?", id))
            local chunks = {}
            res.stream(function(chunk) chunks[#chunks + 1] = chunk end)
            local text = table.concat(chunks)
            local data = json.decode(text:match("event: end\ndata: (.-)\n\n"))
            assert.are_not.equal("nil", data.status)
        end)
    end)
end)
