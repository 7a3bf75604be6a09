local helper = require "support.helper"

describe("app.router", function()
    local router_mod, r
    local list, create, get, update, delete, tasks, ping, root, named

    setup(function()
        helper.fresh_host()
        router_mod = require "app.router"
    end)

    before_each(function()
        r = router_mod.new()
        list, create = { name = "list" }, { name = "create" }
        get, update, delete = { name = "get" }, { name = "update" }, { name = "delete" }
        tasks, ping, root, named = { name = "tasks" }, { name = "ping" }, { name = "root" }, { name = "named" }
        r:add("GET", "/", root)
        r:add("GET", "/ping", ping)
        r:add("GET", "/api/projects", list)
        r:add("POST", "/api/projects", create)
        r:add("PUT", "/api/projects/<int:id>", update)
        r:add("GET", "/api/projects/<int:id>", get)
        r:add("DELETE", "/api/projects/<int:id>", delete)
        r:add("GET", "/api/projects/<int:id>/tasks", tasks)
        r:add("GET", "/api/things/<name>", named)
    end)

    describe("exact routes", function()
        it("matches a literal path with empty params", function()
            local route, params = r:match("GET", "/api/projects")
            assert.are.equal(list, route)
            assert.are.same({}, params)
        end)

        it("shares one read-only params table between requests", function()
            local _, p1 = r:match("GET", "/api/projects")
            local _, p2 = r:match("GET", "/ping")
            assert.are.equal(p1, p2)
            assert.has_error(function() p1.id = 1 end, "route params are read-only")
            assert.is_nil(next(p1))
            -- a patterned route still gets its own table
            local _, p3 = r:match("GET", "/api/projects/7")
            local _, p4 = r:match("GET", "/api/projects/8")
            assert.are_not.equal(p3, p4)
            assert.are.same({ id = 7 }, p3)
        end)

        it("picks the route by method", function()
            assert.are.equal(create, (r:match("POST", "/api/projects")))
        end)

        it("matches the root path", function()
            assert.are.equal(root, (r:match("GET", "/")))
        end)

        it("ignores one trailing slash", function()
            assert.are.equal(list, (r:match("GET", "/api/projects/")))
            assert.are.equal(ping, (r:match("GET", "/ping/")))
        end)

        it("is case-sensitive and answers not_found for unknown paths", function()
            local route, why = r:match("GET", "/API/projects")
            assert.is_nil(route)
            assert.are.equal("not_found", why)
            assert.are.same({ nil, "not_found" }, { r:match("GET", "/nope") })
        end)
    end)

    describe("<int:id> parameters", function()
        it("parses the segment as a Lua integer", function()
            local route, params = r:match("GET", "/api/projects/42")
            assert.are.equal(get, route)
            assert.are.equal(42, params.id)
            assert.are.equal("integer", math.type(params.id))
        end)

        it("accepts leading zeros and reads them as decimal", function()
            local _, params = r:match("GET", "/api/projects/007")
            assert.are.equal(7, params.id)
            assert.are.equal("integer", math.type(params.id))
            local _, p010 = r:match("GET", "/api/projects/010")
            assert.are.equal(10, p010.id) -- not octal
        end)

        it("accepts zero", function()
            local _, params = r:match("GET", "/api/projects/0")
            assert.are.equal(0, params.id)
        end)

        it("accepts the largest 18-digit number exactly", function()
            local _, params = r:match("GET", "/api/projects/999999999999999999")
            assert.are.equal(999999999999999999, params.id)
            assert.are.equal("integer", math.type(params.id))
        end)

        it("refuses numbers that could overflow int64 (19+ digits) as not found", function()
            assert.are.same({ nil, "not_found" }, { r:match("GET", "/api/projects/9223372036854775807") })
            assert.are.same({ nil, "not_found" }, { r:match("GET", "/api/projects/99999999999999999999999") })
        end)

        it("refuses negative, signed, fractional, hex and non-numeric ids", function()
            for _, bad in ipairs({ "-1", "+1", "1.5", "1e3", "0x10", "abc", "12a", " 1", "%31" }) do
                local route, why = r:match("GET", "/api/projects/" .. bad)
                assert.is_nil(route, bad)
                assert.are.equal("not_found", why, bad)
            end
        end)

        it("matches nested patterned routes and trailing slashes", function()
            local route, params = r:match("GET", "/api/projects/5/tasks/")
            assert.are.equal(tasks, route)
            assert.are.equal(5, params.id)
            local route2, params2 = r:match("GET", "/api/projects/5/")
            assert.are.equal(get, route2)
            assert.are.equal(5, params2.id)
        end)

        it("requires the same number of segments", function()
            assert.are.same({ nil, "not_found" }, { r:match("GET", "/api/projects/5/tasks/extra") })
            assert.are.same({ nil, "not_found" }, { r:match("GET", "/api/projects/5/other") })
        end)
    end)

    describe("<name> parameters", function()
        it("passes the raw segment as a string", function()
            local route, params = r:match("GET", "/api/things/hello-world")
            assert.are.equal(named, route)
            assert.are.equal("hello-world", params.name)
            local _, p = r:match("GET", "/api/things/123")
            assert.are.equal("123", p.name)
        end)
    end)

    describe("405", function()
        it("reports method_not_allowed with the sorted allowed methods (patterned)", function()
            local route, why, allowed = r:match("POST", "/api/projects/1")
            assert.is_nil(route)
            assert.are.equal("method_not_allowed", why)
            assert.are.same({ "DELETE", "GET", "HEAD", "PUT" }, allowed) -- HEAD is served by GET
        end)

        it("reports method_not_allowed with the sorted allowed methods (exact)", function()
            local route, why, allowed = r:match("DELETE", "/api/projects")
            assert.is_nil(route)
            assert.are.equal("method_not_allowed", why)
            assert.are.same({ "GET", "HEAD", "POST" }, allowed)
        end)

        it("does not turn an invalid id into a 405", function()
            assert.are.same({ nil, "not_found" }, { r:match("POST", "/api/projects/x") })
        end)
    end)

    describe("HEAD", function()
        it("falls back to the GET route", function()
            assert.are.equal(ping, (r:match("HEAD", "/ping")))
            local route, params = r:match("HEAD", "/api/projects/3")
            assert.are.equal(get, route)
            assert.are.equal(3, params.id)
        end)

        it("prefers an explicit HEAD route", function()
            local head = {}
            r:add("HEAD", "/ping", head)
            assert.are.equal(head, (r:match("HEAD", "/ping")))
        end)

        it("is a 405 when there is no GET route", function()
            local r2 = router_mod.new()
            r2:add("POST", "/only-post", create)
            local route, why, allowed = r2:match("HEAD", "/only-post")
            assert.is_nil(route)
            assert.are.equal("method_not_allowed", why)
            assert.are.same({ "POST" }, allowed)
        end)
    end)

    describe("declarations", function()
        it("refuses a duplicate exact route, blaming the caller", function()
            local ok, err = pcall(r.add, r, "GET", "/ping", {})
            assert.is_false(ok)
            assert.matches("duplicate route GET /ping", err, 1, true)
        end)

        it("refuses a duplicate patterned route", function()
            assert.has_error(function() r:add("GET", "/api/projects/<int:id>", {}) end)
            local ok, err = pcall(function() r:add("GET", "/api/projects/<int:id>", {}) end)
            assert.is_false(ok)
            assert.matches("duplicate route GET /api/projects/<int:id>", err, 1, true)
            assert.matches("router_spec.lua", err, 1, true)
        end)

        it("allows the same path with another method", function()
            assert.has_no.errors(function() r:add("PATCH", "/api/projects/<int:id>", {}) end)
            local _, _, allowed = r:match("POST", "/api/projects/1")
            assert.are.same({ "DELETE", "GET", "HEAD", "PATCH", "PUT" }, allowed)
        end)

        it("refuses unknown parameter types", function()
            local ok, err = pcall(function() r:add("GET", "/x/<float:v>", {}) end)
            assert.is_false(ok)
            assert.matches("unknown parameter type 'float'", err, 1, true)
        end)

        it("refuses non-string methods or patterns", function()
            assert.has_error(function() r:add(nil, "/x", {}) end)
            assert.has_error(function() r:add("GET", 42, {}) end)
        end)

        it("records every declared (method, path) in order", function()
            assert.are.equal(9, #r.routes)
            assert.are.same({ method = "GET", path = "/", route = root }, r.routes[1])
            assert.are.same({ method = "GET", path = "/api/things/<name>", route = named }, r.routes[9])
        end)
    end)
end)
