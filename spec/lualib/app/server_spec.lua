-- app.server's request pipeline details that the route specs do not reach:
-- query parameters (parsed, or one shared read-only table when there is no query).
local helper = require "support.helper"

describe("app.server", function()
    local server, echo

    setup(function()
        local host = helper.fresh_host({ env = {
            RATE_LIMIT_PER_MINUTE = "0", RATE_LIMIT_IP_PER_MINUTE = "0", CORS_ORIGINS = false,
        } })
        local require_sandboxed, finish_loading = helper.sandbox(host)
        server = require_sandboxed("app.server")
        finish_loading()
        -- A route of our own through the real pipeline: it reports what it was given.
        echo = { auth = "none", rate = "none", fn = function(req)
            local ok, err = pcall(function() req.query_params.injected = "x" end)
            return 200, { query = req.query_params, write_ok = ok, write_error = ok and nil or tostring(err) }
        end }
        server.router:add("GET", "/spec/echo", echo)
    end)

    local function get(path, query)
        local res = helper.handle(server, helper.request { method = "GET", path = path, query = query })
        return res.status, require("host").json.decode(res.body)
    end

    it("parses the query string, first value wins, + and %XX decoded", function()
        local status, body = get("/spec/echo", "a=1&b=x%20y+z&a=2")
        assert.are.equal(200, status)
        assert.are.same({ a = "1", b = "x y z", injected = "x" }, body.query)
        assert.is_true(body.write_ok)
    end)

    it("gives requests without a query one shared empty table that handlers cannot change", function()
        for _, q in ipairs({ false, "" }) do
            local status, body = get("/spec/echo", q or nil)
            assert.are.equal(200, status)
            assert.is_false(body.write_ok)
            assert.matches("query parameters are read%-only", body.write_error)
            assert.are.same({}, body.query)
        end
        -- and nothing leaked into the next request
        local _, body = get("/spec/echo")
        assert.is_nil(body.query.injected)
    end)
end)

describe("app.server.handle results", function()
    local server

    setup(function()
        local host = helper.fresh_host({ env = {
            RATE_LIMIT_PER_MINUTE = "0", RATE_LIMIT_IP_PER_MINUTE = "0", CORS_ORIGINS = "https://app.example",
        } })
        local require_sandboxed, finish_loading = helper.sandbox(host)
        server = require_sandboxed("app.server")
        finish_loading()
    end)

    it("are status, JSON body, headers, user id and no stream", function()
        local status, body, headers, user_id, stream = server.handle(helper.request { method = "GET", path = "/ping" })
        assert.are.equal(200, status)
        assert.matches('^{"message":"pong","status":"success","timestamp":', body)
        assert.are.same({ ["content-type"] = "application/json" }, headers)
        assert.is_nil(user_id)
        assert.is_nil(stream)
    end)

    it("add CORS headers to a copy: the shared JSON headers never change", function()
        local _, _, plain = server.handle(helper.request { method = "GET", path = "/ping" })
        local _, _, cors = server.handle(helper.request { method = "GET", path = "/ping",
            headers = { origin = "https://app.example" } })
        assert.are.equal("https://app.example", cors["access-control-allow-origin"])
        assert.are.equal("application/json", cors["content-type"])
        assert.are_not.equal(plain, cors)
        local _, _, again = server.handle(helper.request { method = "GET", path = "/ping" })
        assert.are.same({ ["content-type"] = "application/json" }, again)
        -- errors and preflights take the same path
        local st, _, err_headers = server.handle(helper.request { method = "GET", path = "/nope",
            headers = { origin = "https://app.example" } })
        assert.are.equal(404, st)
        assert.are.equal("https://app.example", err_headers["access-control-allow-origin"])
        local pst, pbody, pre = server.handle(helper.request { method = "OPTIONS", path = "/api/projects",
            headers = { origin = "https://app.example", ["access-control-request-method"] = "GET" } })
        assert.are.equal(204, pst)
        assert.are.equal("", pbody)
        assert.is_truthy(pre["access-control-allow-methods"])
        assert.are.same({ ["content-type"] = "application/json" },
            select(3, server.handle(helper.request { method = "GET", path = "/ping" })))
    end)
end)
