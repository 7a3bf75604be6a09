-- lualib/app/store/supabase.lua (+ supabase_tasks.lua): the Supabase store's client
-- against the fake host.http (spec/support/fake_host.lua): headers and secrets, owner
-- scoping, retries, error mapping, type normalisation and the schema check. The same
-- store against the real schema is covered end to end by tests/e2e (AICODE_TEST_STORE
-- =supabase, and test_supabase_store.py).
local helper = require "support.helper"

local ALICE = "11111111-1111-4111-8111-111111111111"
local URL = "https://proj.supabase.co"
local KEY = "service-role-key-for-the-spec"

describe("app.store.supabase", function()
    local host, ctl, json, store, config

    local function load(env)
        local e = { SUPABASE_URL = URL, SUPABASE_SERVICE_ROLE_KEY = KEY, AICODE_STORE = false }
        for k, v in pairs(env or {}) do e[k] = v end
        host, ctl = helper.fresh_host({ env = e, migrate = false })
        ctl.secrets.SUPABASE_SERVICE_ROLE_KEY = KEY
        json = host.json
        config = require "app.config"
        store = require "app.store"
    end

    local function reply(status, body, headers)
        ctl:queue_http({ status = status, body = type(body) == "string" and body or json.encode(body),
            headers = headers })
    end

    local function call(i)
        return ctl.http_calls[i or #ctl.http_calls]
    end

    -- The query string of a call, decoded, as a set of "key=value" strings.
    local function query_of(c)
        local q = c.url:match("%?(.*)$") or ""
        local set = {}
        for part in q:gmatch("[^&]+") do
            set[(part:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))] = true
        end
        return set
    end

    before_each(function() load() end)
    after_each(function() ctl:cleanup() end)

    describe("selection and requests", function()
        it("is the store when SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY are set", function()
            assert.are.equal("supabase", config.get().store)
            assert.are.equal(require("app.store.supabase"), store)
        end)

        it("sends the service-role key as secret handles, never as a Lua string", function()
            reply(200, { { id = ALICE, email = json.null } })
            assert.is_not_nil(store:get_user(ALICE))
            local c = call()
            assert.are.equal("GET", c.method)
            assert.are.equal(URL .. "/rest/v1/users", c.url:match("^[^?]+"))
            assert.is_true(c.allow_http)
            assert.are_not.equal("string", type(c.headers.apikey))
            assert.are_not.equal("string", type(c.headers.authorization))
            assert.are.equal(KEY, ctl:secret_value(c.headers.apikey))
            assert.are.equal("Bearer " .. KEY, ctl:secret_value(c.headers.authorization))
            for _, v in pairs(c.headers) do
                if type(v) == "string" then assert.is_nil(v:find(KEY, 1, true)) end
            end
            assert.is_nil(c.url:find(KEY, 1, true))
        end)

        it("fails every call when the key is missing", function()
            load()
            ctl.secrets.SUPABASE_SERVICE_ROLE_KEY = false
            helper.unload_app()
            package.loaded.host = nil
            helper.fake_host.install(host)
            store = require "app.store.supabase"
            local res, err = store:get_task(ALICE, 1)
            assert.is_nil(res)
            assert.matches("SUPABASE_SERVICE_ROLE_KEY is not set", err, 1, true)
            assert.are.equal(0, #ctl.http_calls)
        end)
    end)

    describe("owner scoping", function()
        -- Every method a route calls filters on the caller (the key bypasses RLS).
        local cases = {
            { "get_project", function() return store:get_project(ALICE, 7) end, { {} } },
            { "list_projects", function() return store:list_projects(ALICE) end, {} },
            { "update_project", function() return store:update_project(ALICE, 7, { name = "x" }) end, {} },
            { "delete_project", function() return store:delete_project(ALICE, 7) end, {} },
            { "list_project_tasks", function() return store:list_project_tasks(ALICE, 7) end, {} },
            { "get_task", function() return store:get_task(ALICE, 7) end, {} },
            { "list_tasks", function() return store:list_tasks(ALICE, { limit = 10, offset = 0 }) end, {} },
            { "set_pr", function() return store:set_pr(ALICE, 7, { pr_number = 1 }) end, {} },
        }
        for _, case in ipairs(cases) do
            it(case[1] .. " filters on user_id", function()
                reply(200, case[3])
                case[2]()
                assert.is_true(query_of(call(1))["user_id=eq." .. ALICE], call(1).url)
            end)
        end

        it("count_tasks filters on user_id and reads the exact count", function()
            reply(206, { { id = 3 } }, { ["content-range"] = "0-0/42" })
            assert.are.equal(42, store:count_tasks(ALICE, { status = "running", project_id = 5 }))
            local q = query_of(call())
            assert.is_true(q["user_id=eq." .. ALICE])
            assert.is_true(q["status=eq.running"])
            assert.is_true(q["project_id=eq.5"])
            assert.are.equal("count=exact", call().headers.prefer)
            reply(200, {}, { ["content-range"] = "*/0" })
            assert.are.equal(0, store:count_tasks(ALICE, {}))
        end)

        it("request_cancel and start_followup pass the caller to the function", function()
            reply(200, '"cancelling"')
            assert.are.equal("cancelling", store:request_cancel(ALICE, 9))
            assert.are.same({ user_id = ALICE, task_id = 9 }, json.decode(call().body))
            assert.matches("/rest/v1/rpc/request_cancel_task$", call().url)
            reply(200, "null")
            assert.is_nil(store:request_cancel(ALICE, 9))
            reply(200, {})
            reply(200, {})
            local task, err = store:start_followup(ALICE, 9, { role = "user", content = "more" })
            assert.is_nil(task)
            assert.is_nil(err) -- not the caller's task
            assert.is_true(query_of(call())["user_id=eq." .. ALICE])
            assert.are.equal(ALICE, json.decode(call(#ctl.http_calls - 1).body).user_id)
        end)

        it("start_followup: busy when the task exists but is not finished", function()
            reply(200, {})
            reply(200, { { id = 9 } })
            local task, err = store:start_followup(ALICE, 9, { role = "user", content = "more" })
            assert.is_nil(task)
            assert.are.equal("busy", err)
        end)

        it("start_followup clears a stale cancel flag so the task can be claimed", function()
            reply(200, { { id = 9, status = "pending", cancel_requested = true, chat_messages = {} } })
            reply(200, { { id = 9 } })
            local task = store:start_followup(ALICE, 9, { role = "user", content = "more" })
            assert.are.equal(9, task.id)
            assert.is_nil(task.cancel_requested)
            assert.are.equal("PATCH", call().method)
            assert.are.same({ cancel_requested = false }, json.decode(call().body))
            assert.is_true(query_of(call())["status=eq.pending"])
        end)
    end)

    describe("failures", function()
        it("retries an idempotent read on 503 and connection errors, with backoff", function()
            reply(503, { code = "PGRST000", message = "Database connection error" })
            ctl:queue_http("connect")
            reply(200, { { id = 1, status = "running", cancel_requested = false } })
            assert.are.equal("running", (store:task_status(1)))
            assert.are.equal(3, #ctl.http_calls)
            assert.are.equal(2, #ctl.sleeps)
            assert.is_true(ctl.sleeps[2] > ctl.sleeps[1])
        end)

        it("an unreachable database is nil, 'unavailable', logged with the detail", function()
            for _ = 1, 3 do ctl:queue_http("connect") end
            local res, err = store:get_task(ALICE, 1)
            assert.is_nil(res)
            assert.are.equal("unavailable", err)
            assert.is_not_nil(ctl:logged("warn", "database unreachable"))
        end)

        it("does not retry a write", function()
            reply(503, { code = "PGRST000", message = "down" })
            local res, err = store:create_project(ALICE, { name = "n", repo_url = "https://github.com/o/r",
                repo_owner = "o", repo_name = "r" })
            assert.is_nil(res)
            assert.are.equal("unavailable", err)
            assert.are.equal(1, #ctl.http_calls)
        end)

        it("maps a unique violation to 'conflict'", function()
            reply(409, { code = "23505", message = "duplicate key value violates unique constraint",
                details = "Key (user_id, repo_url)=(...) already exists.", hint = json.null })
            local res, err = store:create_project(ALICE, { name = "n", repo_url = "https://github.com/o/r",
                repo_owner = "o", repo_name = "r" })
            assert.is_nil(res)
            assert.are.equal("conflict", err)
        end)

        it("keeps other PostgREST errors for the log (code, message, details, hint)", function()
            reply(400, { code = "22P02", message = "invalid input syntax for type bigint", details = "d",
                hint = "h" })
            local res, err = store:get_task(ALICE, 5)
            assert.is_nil(res)
            assert.matches("22P02", err, 1, true)
            assert.matches("invalid input syntax", err, 1, true)
            assert.matches("details: d", err, 1, true)
            assert.matches("hint: h", err, 1, true)
            assert.are.equal(1, #ctl.http_calls) -- a 400 is not retried
        end)

        it("a user unknown to Supabase Auth cannot be ensured (public.users references auth.users)", function()
            reply(409, { code = "23503", message = "insert or update on table users violates foreign key" })
            local res, err = store:ensure_user(ALICE, {})
            assert.is_nil(res)
            assert.matches("no Supabase Auth user", err, 1, true)
        end)

        it("a non-UUID user id names no user, without a request", function()
            assert.is_nil(store:get_user("' OR 1=1 --"))
            assert.are.equal(0, #ctl.http_calls)
        end)
    end)

    describe("shapes", function()
        it("normalises timestamps to the SQLite store's ISO format", function()
            local iso = require("app.store.supabase").iso
            assert.are.equal("2026-01-02T03:04:05.123Z", iso("2026-01-02T03:04:05.123456+00:00"))
            assert.are.equal("2026-01-02T03:04:05.000Z", iso("2026-01-02T03:04:05+00:00"))
            assert.are.equal("2026-01-02T03:04:05.100Z", iso("2026-01-02T03:04:05.1Z"))
            assert.are.equal("2026-01-02T01:04:05.500Z", iso("2026-01-02T03:04:05.5+02:00"))
            assert.are.equal("2026-01-02T01:30:00.000Z", iso("2026-01-02T01:00:00-00:30"))
            assert.are.equal("2026-01-01T23:30:00.000Z", iso("2026-01-02T01:00:00+01:30"))
            assert.are.equal("not a time", iso("not a time"))
            local epoch_of = require("app.store.supabase").epoch_of
            assert.are.equal(1767225600.25, epoch_of("2026-01-01T00:00:00.25+00:00"))
        end)

        it("rows: JSON columns marked (NULL -> defaults), ids integers, ISO times", function()
            reply(200, { {
                id = 12, user_id = ALICE, project_id = json.null, status = "completed",
                changed_files = json.null, chat_messages = json.array(), execution_metadata = json.null,
                created_at = "2026-01-02T03:04:05.123456+00:00", started_at = json.null,
                updated_at = "2026-01-02T03:04:05+00:00", completed_at = "2026-01-02T03:04:06.9+00:00",
            } })
            local t = store:get_task(ALICE, 12)
            assert.are.equal("integer", math.type(t.id))
            assert.are.equal(json.null, t.project_id)
            assert.are.equal(json.null, t.started_at)
            assert.are.equal("2026-01-02T03:04:05.123Z", t.created_at)
            assert.are.equal("2026-01-02T03:04:06.900Z", t.completed_at)
            local text = json.encode(t)
            assert.matches('"changed_files":[]', text, 1, true)
            assert.matches('"chat_messages":[]', text, 1, true)
            assert.matches('"execution_metadata":{}', text, 1, true)
        end)

        it("projects: read from projects_with_counts; a new one has zero counts", function()
            reply(201, { { id = 3, user_id = ALICE, is_active = true, settings = json.object(),
                created_at = "2026-01-02T03:04:05.123456+00:00", updated_at = "2026-01-02T03:04:05.123456+00:00" } })
            local p = store:create_project(ALICE, { name = "n", repo_url = "https://github.com/o/r",
                repo_owner = "o", repo_name = "r", settings = { a = json.array() } })
            assert.are.same({ 0, 0, 0 }, { p.task_count, p.completed_tasks, p.active_tasks })
            assert.is_true(p.is_active)
            local sent = call().body
            assert.matches('"settings":{"a":[]}', sent, 1, true)
            assert.matches('"is_active":true', sent, 1, true)
            assert.matches('"user_id":"' .. ALICE .. '"', sent, 1, true)
            assert.matches("return=representation", call().headers.prefer, 1, true)
            reply(200, {})
            store:list_projects(ALICE)
            assert.matches("/rest/v1/projects_with_counts?", call().url, 1, true)
            assert.is_true(query_of(call())["order=created_at.desc,id.desc"])
        end)

        it("events: data as JSON text, oldest first after the given id", function()
            reply(200, { { id = 5, type = "status", data = '{"status": "running"}',
                created_at = "2026-01-02T03:04:05.123456+00:00" } })
            local events = store:events_since(12, 4, 200)
            assert.are.equal('{"status": "running"}', events[1].data)
            assert.are.equal("2026-01-02T03:04:05.123Z", events[1].created_at)
            local q = query_of(call())
            assert.is_true(q["select=id,type,data::text,created_at"])
            assert.is_true(q["task_id=eq.12"])
            assert.is_true(q["id=gt.4"])
            assert.is_true(q["order=id.asc"])
        end)

        it("task_for_run: the SQLite store's types for the engine columns", function()
            reply(200, { { id = 3, cancel_requested = true, lease_until = "2026-01-01T00:00:10+00:00",
                heartbeat_at = json.null, chat_messages = json.array() } })
            local t = store:task_for_run(3)
            assert.are.equal(1, t.cancel_requested)
            assert.are.equal(1767225610, t.lease_until)
        end)

        it("request bodies: no \\u0000 (jsonb refuses it) and valid UTF-8", function()
            reply(201, { { id = 1 } })
            assert.are.equal(1, store:add_event(3, "output", { text = "a\0b\255c", lit = "\\u0000" }))
            local body = call().body
            assert.is_nil(body:find("\\u0000\"", 1, true) and body:find('"a\\u0000', 1, true))
            local sent = json.decode(body)
            assert.are.equal("a\u{FFFD}b\u{FFFD}c", sent.data.text)
            assert.are.equal("\\u0000", sent.data.lit) -- a literal backslash-u is kept
        end)
    end)

    describe("tasks and the queue", function()
        it("create_task with an idempotency key returns the first task on a retry", function()
            reply(201, {})
            reply(200, { { id = 4, chat_messages = json.array() } })
            local t, created = store:create_task(ALICE, { prompt = "p", repo_url = "u", branch = "main",
                agent = "shell", idempotency_key = "k-1", timestamp = "t" })
            assert.are.equal(4, t.id)
            assert.is_false(created)
            local insert = ctl.http_calls[1]
            assert.is_true(query_of(insert)["on_conflict=user_id,idempotency_key"])
            assert.matches("resolution=ignore-duplicates", insert.headers.prefer, 1, true)
            local q = query_of(call())
            assert.is_true(q["idempotency_key=eq.k-1"])
            assert.is_true(q["user_id=eq." .. ALICE])
        end)

        it("claim_next: one row or nil", function()
            reply(200, { { id = 8, user_id = ALICE, attempts = 1 } })
            assert.are.same({ id = 8, user_id = ALICE, attempts = 1 }, store:claim_next("h1", 30, 4, 2))
            assert.are.same({ owner = "h1", lease_seconds = 30, max_global = 4, max_per_user = 2 },
                json.decode(call().body))
            reply(200, {})
            assert.is_nil(store:claim_next("h1", 30, 4, 2))
        end)

        it("heartbeat: held and cancel flags; a failure is nil (not a lost lease)", function()
            reply(200, { held = false, cancel_requested = true })
            local held, cancel = store:heartbeat(3, "h1", 30)
            assert.is_false(held)
            assert.is_true(cancel)
            ctl:queue_http("connect")
            ctl:queue_http("connect")
            assert.is_nil((store:heartbeat(3, "h1", 30)))
        end)

        it("finish_run clears fields given as json.null after the function kept them", function()
            reply(200, "true")
            reply(200, { { id = 3 } })
            assert.is_true(store:finish_run(3, "h1", { status = "completed", commit_hash = json.null, git_diff = "",
                changed_files = json.array(), assistant_message = { role = "assistant", content = "ok" } }))
            local args = json.decode(ctl.http_calls[1].body)
            assert.is_nil(args.commit_hash)
            assert.are.equal("", args.git_diff)
            assert.are.equal(json.null, args.error)
            assert.are.equal("PATCH", call().method)
            assert.are.same({ commit_hash = json.null }, json.decode(call().body))
            reply(200, "false")
            assert.is_false(store:finish_run(3, "h1", { status = "failed", error = "x" }))
        end)
    end)

    describe("rate limits", function()
        it("rate_limit_hit: one POST to the function per hit, its answer as allowed, retry_after", function()
            reply(200, { allowed = false, retry_after = 42 })
            local allowed, retry = store:rate_limit_hit("rl:ip:10.0.0.1", 60, 5)
            assert.is_false(allowed)
            assert.are.equal(42, retry)
            assert.are.equal("integer", math.type(retry))
            assert.are.equal("POST", call().method)
            assert.matches("/rest/v1/rpc/rate_limit_hit$", call().url)
            assert.are.same({ key = "rl:ip:10.0.0.1", window_seconds = 60, max_hits = 5 }, json.decode(call().body))
            reply(200, { { allowed = true, retry_after = 60 } }) -- the same as a one-row array
            assert.is_true((store:rate_limit_hit("rl:u:" .. ALICE, 60, 5)))
        end)

        it("rate_limit_hit: not retried, and anything but an answer is nil, err (never a refusal)", function()
            reply(503, { code = "PGRST000", message = "down" })
            local allowed, err = store:rate_limit_hit("rl:ip:10.0.0.1", 60, 5)
            assert.is_nil(allowed)
            assert.are.equal("unavailable", err)
            assert.are.equal(1, #ctl.http_calls)
            assert.are.same({}, ctl.sleeps)
            for _, body in ipairs({ "{}", "[]", '{"allowed": "yes"}', "null", "true" }) do
                reply(200, body)
                allowed, err = store:rate_limit_hit("rl:ip:10.0.0.1", 60, 5)
                assert.is_nil(allowed, body)
                assert.is_string(err, body)
            end
        end)
    end)

    describe("schema", function()
        it("ping: true when the expected migration is recorded", function()
            reply(200, { { version = store.SCHEMA_VERSION } })
            assert.is_true(store:ping())
            assert.is_true(query_of(call())["version=eq." .. store.SCHEMA_VERSION])
        end)

        it("ping: a clear, client-safe message when it is not", function()
            reply(200, {})
            local ok, err, public = store:ping()
            assert.is_nil(ok)
            assert.matches("^schema mismatch: run aicode migrate with DATABASE_URL", err)
            assert.are.equal(err, public)
            reply(404, { code = "42P01", message = 'relation "public.schema_migrations" does not exist' })
            ok, err = store:ping()
            assert.is_nil(ok)
            assert.matches("^schema mismatch", err)
            -- A plain PostgreSQL without even the API roles (the test shim makes them).
            reply(400, { code = "22023", message = 'role "service_role" does not exist' })
            ok, err = store:ping()
            assert.is_nil(ok)
            assert.matches("^schema mismatch", err)
            -- Anything else is not a mismatch, and its text is not for clients.
            reply(403, { code = "42501", message = "permission denied for table schema_migrations" })
            ok, err, public = store:ping()
            assert.is_nil(ok)
            assert.matches("42501", err, 1, true)
            assert.is_nil(public)
        end)

        it("is a configuration problem at start; an unreachable database is not", function()
            reply(200, {})
            local problems = config.problems()
            assert.are.equal(1, #problems)
            assert.matches("^schema mismatch: run aicode migrate with DATABASE_URL", problems[1])
            ctl:queue_http("connect")
            assert.are.same({}, config.problems())
        end)

        it("health reports the backend and the mismatch", function()
            local health = require "routes.health"
            reply(200, {})
            local status, body = health.health(helper.request())
            assert.are.equal(503, status)
            assert.are.equal("supabase", body.store.backend)
            assert.is_false(body.store.reachable)
            assert.matches("^schema mismatch", body.store.problem)
            reply(200, { { version = store.SCHEMA_VERSION } })
            status, body = health.health(helper.request())
            assert.are.equal(200, status)
            assert.are.same({ backend = "supabase", reachable = true }, body.store)
        end)
    end)
end)
