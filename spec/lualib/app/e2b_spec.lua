-- lualib/app/e2b.lua's sandbox list and lualib/app/sandbox/e2b.lua's orphan reaper
-- against the fake host.http (spec/support/fake_host.lua): every page of
-- GET /v2/sandboxes is read (X-Next-Token -> nextToken), within a page bound, and what
-- a failed or bounded listing did read is still reaped. The same code against the E2B
-- double, through bin/aicode, is tests/e2e/test_e2b_tasks.py (E2BReaperTests).
local helper = require "support.helper"

local API = "https://api.e2b.test"

describe("app.e2b list and the orphan reaper", function()
    local host, ctl, json, e2b, provider

    before_each(function()
        host, ctl = helper.fresh_host({
            env = { SANDBOX_PROVIDER = "e2b", E2B_API_KEY = "e2b_spec", E2B_API_URL = API,
                E2B_DEPLOYMENT = "prod" },
            migrate = false,
        })
        ctl.secrets.E2B_API_KEY = "e2b_spec"
        json = host.json
        e2b = require "app.e2b"
        provider = require "app.sandbox.e2b"
    end)
    after_each(function() ctl:cleanup() end)

    local function sandboxes(from, to, meta)
        local out = {}
        for i = from, to do
            local m = { app = "aicode", deployment = "prod", task_id = tostring(i) }
            for k, v in pairs(meta or {}) do m[k] = v end
            out[#out + 1] = { sandboxID = "sb" .. i, metadata = m, state = "running" }
        end
        return out
    end

    local function page(items, token)
        ctl:queue_http({ status = 200, body = json.encode(items),
            headers = token and { ["x-next-token"] = token } or {} })
    end

    local function query(i)
        local q = {}
        for k, v in (ctl.http_calls[i].url:match("%?(.*)$") or ""):gmatch("([^&=]+)=([^&]*)") do
            q[k] = v:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
        end
        return q
    end

    local function ids(list)
        local out = {}
        for _, sb in ipairs(list) do out[#out + 1] = sb.sandboxID end
        return out
    end

    describe("e2b.list", function()
        it("reads every page, passing each X-Next-Token back as nextToken (URL-encoded)", function()
            page(sandboxes(1, 100), "MjAyNi0wMS0wMVQwMDowMDowMFpfX3NiMTAw")
            page(sandboxes(101, 200), "dG9rZW4_Mg==")
            page(sandboxes(201, 250))
            local list, err, pages = e2b.list({ app = "aicode", deployment = "prod" }, 50)
            assert.is_nil(err)
            assert.are.equal(3, pages)
            assert.are.equal(250, #list)
            assert.are.equal("sb250", list[250].sandboxID)
            assert.are.equal(3, #ctl.http_calls)
            for i = 1, 3 do
                local c = ctl.http_calls[i]
                assert.are.equal("GET", c.method)
                assert.are.equal(API .. "/v2/sandboxes", c.url:match("^[^?]+"))
                local q = query(i)
                assert.are.equal("100", q.limit)
                assert.are.equal("running", q.state)
                assert.are.equal("app=aicode&deployment=prod", q.metadata)
            end
            assert.is_nil(query(1).nextToken)
            assert.are.equal("MjAyNi0wMS0wMVQwMDowMDowMFpfX3NiMTAw", query(2).nextToken)
            assert.are.equal("dG9rZW4_Mg==", query(3).nextToken)
            assert.truthy(ctl.http_calls[3].url:find("nextToken=dG9rZW4_Mg%3D%3D", 1, true))
        end)

        it("treats an empty X-Next-Token as the last page", function()
            page(sandboxes(1, 2), "")
            local list, err, pages = e2b.list({ app = "aicode" }, 50)
            assert.are.same({ "sb1", "sb2" }, ids(list))
            assert.are.same({ nil, 1 }, { err, pages })
        end)

        it("lists each sandbox once when pages overlap", function()
            page(sandboxes(1, 3), "t1")
            page(sandboxes(2, 5))
            local list = e2b.list({ app = "aicode" }, 50)
            assert.are.same({ "sb1", "sb2", "sb3", "sb4", "sb5" }, ids(list))
        end)

        it("stops after max_pages pages and says so, with what it read", function()
            for i = 1, 4 do page(sandboxes(i, i), "t" .. i) end
            local list, err, pages = e2b.list({ app = "aicode" }, 3)
            assert.are.same({ "sb1", "sb2", "sb3" }, ids(list))
            assert.are.equal(3, pages)
            assert.matches("stopped after 3 pages", err)
            assert.are.equal(3, #ctl.http_calls)
        end)

        it("stops when a page repeats an earlier next token", function()
            page(sandboxes(1, 1), "a")
            page(sandboxes(2, 2), "b")
            page(sandboxes(3, 3), "a")
            local list, err, pages = e2b.list({ app = "aicode" }, 50)
            assert.are.same({ "sb1", "sb2", "sb3" }, ids(list))
            assert.are.equal(3, pages)
            assert.matches("repeated an earlier next token", err)
        end)

        it("fails when the first page fails", function()
            ctl:queue_http({ status = 500,
                body = json.encode({ code = 500, message = "Error when getting sandboxes" }) })
            local list, err = e2b.list({ app = "aicode" }, 50)
            assert.is_nil(list)
            assert.matches("E2B API error 500: Error when getting sandboxes", err, 1, true)
        end)

        it("keeps the pages read before a later page fails (400 Invalid next token)", function()
            page(sandboxes(1, 100), "not-a-cursor!")
            ctl:queue_http({ status = 400, body = json.encode({ code = 400, message = "Invalid next token" }) })
            local list, err, pages = e2b.list({ app = "aicode" }, 50)
            assert.are.equal(100, #list)
            assert.are.equal(1, pages)
            assert.matches("Invalid next token", err, 1, true)
            assert.matches("after 1 pages", err, 1, true)
            assert.are.equal("not-a-cursor!", query(2).nextToken)
        end)

        it("refuses a body that is not a list", function()
            ctl:queue_http({ status = 200, body = json.encode({ sandboxID = "x" }) })
            local list, err = e2b.list({ app = "aicode" }, 50)
            assert.is_nil(list)
            assert.matches("malformed", err)
        end)
    end)

    describe("the reaper", function()
        local function status_of(running)
            return function(id) return running[id] and "running" or "completed" end
        end

        local function deletes()
            local out = {}
            for _, c in ipairs(ctl.http_calls) do
                if c.method == "DELETE" then out[#out + 1] = c.url:match("/sandboxes/(.+)$") end
            end
            return out
        end

        local function queue_deletes(n)
            for _ = 1, n do ctl:queue_http({ status = 204 }) end
        end

        it("kills the orphans of every page, and not a running task's sandbox or a PR's", function()
            page(sandboxes(1, 100), "t1")
            local p2 = sandboxes(101, 200)
            p2[50].metadata.purpose = "pr"
            page(p2, "t2")
            page(sandboxes(201, 250))
            queue_deletes(248)
            local killed, err = provider.reap(status_of({ [7] = true }))
            assert.is_nil(err)
            assert.are.equal(248, killed)
            local d = deletes()
            assert.are.equal(248, #d)
            local set = {}
            for _, id in ipairs(d) do set[id] = true end
            assert.is_nil(set.sb7)
            assert.is_nil(set.sb150)
            assert.is_true(set.sb1 and set.sb250)
            assert.are.equal("app=aicode&deployment=prod", query(1).metadata)
            assert.is_nil(ctl:logged("warn", "incomplete"))
        end)

        it("reaps what an incomplete listing read and logs why it is incomplete", function()
            page(sandboxes(1, 2), "t1")
            ctl:queue_http({ status = 400, body = json.encode({ code = 400, message = "Invalid next token" }) })
            queue_deletes(2)
            assert.are.equal(2, provider.reap(status_of({})))
            local entry = ctl:logged("warn", "the sandbox list is incomplete")
            assert.is_not_nil(entry)
            assert.matches("Invalid next token", entry.fields.error, 1, true)
            assert.are.same({ 1, 2, 50 }, { entry.fields.pages, entry.fields.listed, entry.fields.max_pages })
        end)

        it("reads at most 50 pages a run", function()
            for i = 1, 60 do page(sandboxes(i, i, { task_id = "7" }), "t" .. i) end
            assert.are.equal(0, provider.reap(status_of({ [7] = true })))
            assert.are.equal(50, #ctl.http_calls)
            local entry = ctl:logged("warn", "the sandbox list is incomplete")
            assert.matches("stopped after 50 pages", entry.fields.error)
        end)

        it("fails when nothing could be listed", function()
            ctl:queue_http("connection refused")
            local killed, err = provider.reap(status_of({}))
            assert.is_nil(killed)
            assert.matches("E2B API unreachable", err)
        end)

        it("runs once at a time, and again after a run that raised", function()
            page(sandboxes(1, 1))
            local inner
            local killed = provider.reap(function()
                inner = { provider.reap(status_of({})) } -- a second run while the first one is on
                return "running"
            end)
            assert.are.same({ 0 }, inner)
            assert.are.equal(0, killed)
            assert.are.equal(1, #ctl.http_calls)
            page(sandboxes(1, 1))
            local k, err = provider.reap(function() error("store down") end)
            assert.is_nil(k)
            assert.matches("store down", err)
            page(sandboxes(1, 1))
            queue_deletes(1)
            assert.are.equal(1, provider.reap(status_of({})))
        end)
    end)
end)
