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
        local res = server.handle(helper.request { method = "GET", path = path, query = query })
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
