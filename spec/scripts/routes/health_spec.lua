-- scripts/routes/health.lua: GET /, GET /ping (as in the original), GET /health.
local helper = require "support.helper"

describe("routes.health", function()
    local host, ctl, json, health

    local function load(opts)
        host, ctl = helper.fresh_host(opts)
        json = host.json
        health = require "routes.health"
    end

    after_each(function() ctl:cleanup() end)

    describe("GET /", function()
        before_each(function() load() end)

        it("answers the original body exactly", function()
            local status, body = health.root(helper.request())
            assert.are.equal(200, status)
            assert.are.equal('{"endpoints":["/ping","/start-task","/task-status","/git-diff","/create-pr"],' ..
                '"message":"Claude Code Automation API","status":"success"}', json.encode(body))
        end)
    end)

    describe("GET /ping", function()
        before_each(function() load({ now = 1700000000.125 }) end)

        it("answers pong with a float timestamp", function()
            local status, body = health.ping(helper.request())
            assert.are.equal(200, status)
            assert.are.equal("success", body.status)
            assert.are.equal("pong", body.message)
            assert.are.equal(1700000000.125, body.timestamp)
            assert.are.equal('{"message":"pong","status":"success","timestamp":1700000000.125}', json.encode(body))
        end)

        it("keeps the timestamp a float on a whole second", function()
            load({ now = 1700000000.0 })
            local _, body = health.ping(helper.request())
            local back = json.decode(json.encode(body))
            assert.are.equal("float", math.type(back.timestamp))
        end)
    end)

    describe("GET /health", function()
        it("200 with store, version, uptime, providers and agents", function()
            load({ now = 1700000000.0, version = "1.2.3" })
            ctl.executables.bwrap = "/usr/bin/bwrap"
            -- specs cannot start processes: the provider's self-test is covered end to end
            require("app.sandbox.local").self_test = function() return true end
            ctl:advance(90.7)
            local status, body = health.health(helper.request())
            assert.are.equal(200, status)
            assert.are.equal("ok", body.status)
            assert.are.equal("1.2.3", body.version)
            assert.are.equal(90, body.uptime_seconds)
            assert.are.equal("integer", math.type(body.uptime_seconds))
            assert.are.same({ backend = "sqlite", reachable = true }, body.store)
            assert.are.same({ kind = "bubblewrap", available = true, selected = true }, body.sandbox_providers["local"])
            local text = json.encode(body)
            -- every file in scripts/agents/ is listed with its availability
            assert.are.same({ "claude", "codex", "shell" }, (function()
                local names = {}
                for name in pairs(body.agents) do names[#names + 1] = name end
                table.sort(names)
                return names
            end)())
            assert.is_true(body.agents.shell.available)
            assert.matches('"uptime_seconds":90,', text, 1, true)
        end)

        it("reports a missing bubblewrap as unavailable", function()
            load()
            ctl.executables.bwrap = false
            local _, body = health.health(helper.request())
            assert.is_false(body.sandbox_providers["local"].available)
        end)

        it("503 when the store is down, logging the reason", function()
            local dir = helper.fake_host.temp_dir()
            load({ data_dir = dir .. "/does/not/exist" })
            local status, body = health.health(helper.request())
            assert.are.equal(503, status)
            assert.are.equal("unavailable", body.status)
            assert.are.same({ backend = "sqlite", reachable = false }, body.store)
            local entry = ctl:logged("warn", "store unreachable")
            assert.is_not_nil(entry)
            assert.matches("cannot open database", entry.fields.error, 1, true)
            assert.is_nil(json.encode(body):find("cannot open", 1, true)) -- not sent to the client
        end)

        it("503 while another process holds the database's write lock", function()
            load()
            local other = assert(host.sqlite.open(ctl.db_path))
            assert(other:exec("BEGIN IMMEDIATE"))
            local status, body = health.health(helper.request())
            assert(other:exec("ROLLBACK"))
            other:close()
            assert.are.equal(503, status)
            assert.is_false(body.store.reachable)
        end)
    end)
end)
