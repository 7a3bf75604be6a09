local helper = require "support.helper"

describe("app.errors", function()
    local errors, ctl

    before_each(function()
        ctl = select(2, helper.fresh_host())
        errors = require "app.errors"
    end)

    it("new() builds a typed error value", function()
        local e = errors.new(418, "teapot", { ["x-a"] = "1" })
        assert.are.equal(418, e.status)
        assert.are.equal("teapot", e.message)
        assert.are.same({ ["x-a"] = "1" }, e.headers)
        assert.is_true(errors.is_error(e))
        assert.are.equal("418: teapot", tostring(e))
    end)

    it("raise() throws the error value itself, without position information", function()
        local ok, e = pcall(errors.raise, 409, "dup")
        assert.is_false(ok)
        assert.is_true(errors.is_error(e))
        assert.are.equal(409, e.status)
        assert.are.equal("dup", e.message)
        assert.is_nil(e.headers)
    end)

    it("is_error() is false for strings, plain tables and nil", function()
        assert.is_false(errors.is_error("404: Not found"))
        assert.is_false(errors.is_error({ status = 404, message = "Not found" }))
        assert.is_false(errors.is_error(nil))
        local _, runtime = pcall(function() local t = nil; return t.x end)
        assert.is_false(errors.is_error(runtime))
    end)

    it("has one helper per client error", function()
        local cases = {
            { errors.bad_request, { "bad" }, 400, "bad" },
            { errors.unauthorized, { "who?" }, 401, "who?" },
            { errors.not_found, { "Project not found" }, 404, "Project not found" },
            { errors.not_found, {}, 404, "Not found" },
            { errors.conflict, { "exists" }, 409, "exists" },
        }
        for _, c in ipairs(cases) do
            local e = helper.catch(c[1], table.unpack(c[2]))
            assert.are.equal(c[3], e.status)
            assert.are.equal(c[4], e.message)
        end
    end)

    it("store_unavailable() answers 503 with a generic message and logs the driver text", function()
        local e = helper.catch(errors.store_unavailable, "SQLITE_CORRUPT: database disk image is malformed in users")
        assert.are.equal(503, e.status)
        assert.are.equal("Database unavailable", e.message)
        assert.is_nil(e.message:find("users", 1, true))
        local entry = ctl:logged("error", "^store error$")
        assert.is_not_nil(entry)
        assert.are.equal("SQLITE_CORRUPT: database disk image is malformed in users", entry.fields.error)
    end)

    it("store_unavailable() copes with a nil error", function()
        local e = helper.catch(errors.store_unavailable, nil)
        assert.are.equal(503, e.status)
        assert.are.equal("nil", ctl:logged("error", "store error").fields.error)
    end)
end)
