local helper = require "support.helper"

describe("app.validate", function()
    local validate, json

    setup(function()
        local host = helper.fresh_host()
        json = host.json
        validate = require "app.validate"
    end)

    local function rejects(status, message, fn, ...)
        local err = helper.catch(fn, ...)
        assert.are.equal(status, err.status)
        assert.are.equal(message, err.message)
    end

    describe("is_uuid", function()
        it("accepts canonical UUIDs in either case", function()
            assert.is_true(validate.is_uuid("123e4567-e89b-12d3-a456-426614174000"))
            assert.is_true(validate.is_uuid("123E4567-E89B-12D3-A456-426614174000"))
        end)

        it("rejects anything else", function()
            for _, bad in ipairs({
                "", "123e4567e89b12d3a456426614174000", "123e4567-e89b-12d3-a456-42661417400",
                "123e4567-e89b-12d3-a456-4266141740000", "g23e4567-e89b-12d3-a456-426614174000",
                " 123e4567-e89b-12d3-a456-426614174000", "123e4567-e89b-12d3-a456-426614174000\n",
                "{123e4567-e89b-12d3-a456-426614174000}",
            }) do
                assert.is_false(validate.is_uuid(bad), bad)
            end
            assert.is_false(validate.is_uuid(nil))
            assert.is_false(validate.is_uuid(42))
            assert.is_false(validate.is_uuid({}))
        end)
    end)

    describe("body_object", function()
        it("returns a decoded JSON object", function()
            local body = json.decode('{"a":1}')
            assert.are.equal(body, validate.body_object({ json = body }))
        end)

        it("accepts an empty object", function()
            local body = json.decode("{}")
            assert.are.equal(body, validate.body_object({ json = body }))
        end)

        it("rejects a missing body, arrays, scalars and null with 400", function()
            for _, v in ipairs({ json.decode("[]"), json.decode("[1]"), "text", 42, true, json.null }) do
                rejects(400, "Request body must be a JSON object", validate.body_object, { json = v })
            end
            rejects(400, "Request body must be a JSON object", validate.body_object, {})
        end)

        it("uses the caller's message", function()
            rejects(400, "No data provided", validate.body_object, {}, "No data provided")
        end)
    end)

    describe("optional_string", function()
        it("returns the string, or nil for absent and null", function()
            assert.are.equal("x", validate.optional_string({ name = "x" }, "name"))
            assert.are.equal("", validate.optional_string({ name = "" }, "name"))
            assert.is_nil(validate.optional_string({}, "name"))
            assert.is_nil(validate.optional_string({ name = json.null }, "name"))
        end)

        it("rejects other types naming the field", function()
            rejects(400, "name must be a string", validate.optional_string, { name = 5 }, "name")
            rejects(400, "name must be a string", validate.optional_string, { name = true }, "name")
            rejects(400, "name must be a string", validate.optional_string, { name = json.decode("{}") }, "name")
        end)

        it("enforces the byte limit", function()
            assert.are.equal(("a"):rep(10), validate.optional_string({ n = ("a"):rep(10) }, "n", 10))
            rejects(400, "n must be at most 10 bytes", validate.optional_string, { n = ("a"):rep(11) }, "n", 10)
            -- bytes, not characters: five 2-byte characters are 10 bytes
            assert.are.equal(("é"):rep(5), validate.optional_string({ n = ("é"):rep(5) }, "n", 10))
            rejects(400, "n must be at most 10 bytes", validate.optional_string, { n = ("é"):rep(6) }, "n", 10)
        end)

        it("rejects invalid UTF-8", function()
            rejects(400, "n must be valid UTF-8", validate.optional_string, { n = "ab\xff" }, "n")
        end)
    end)

    describe("optional_boolean", function()
        it("returns booleans, nil for absent and null", function()
            assert.is_true(validate.optional_boolean({ b = true }, "b"))
            assert.is_false(validate.optional_boolean({ b = false }, "b"))
            assert.is_nil(validate.optional_boolean({}, "b"))
            assert.is_nil(validate.optional_boolean({ b = json.null }, "b"))
        end)

        it("rejects truthy non-booleans", function()
            rejects(400, "b must be a boolean", validate.optional_boolean, { b = 1 }, "b")
            rejects(400, "b must be a boolean", validate.optional_boolean, { b = "true" }, "b")
        end)
    end)

    describe("optional_object", function()
        it("returns objects, nil for absent and null", function()
            local o = json.decode('{"k":[1]}')
            assert.are.equal(o, validate.optional_object({ s = o }, "s"))
            assert.is_nil(validate.optional_object({}, "s"))
            assert.is_nil(validate.optional_object({ s = json.null }, "s"))
        end)

        it("rejects arrays (even empty ones) and scalars", function()
            rejects(400, "s must be an object", validate.optional_object, { s = json.decode("[]") }, "s")
            rejects(400, "s must be an object", validate.optional_object, { s = "x" }, "s")
            rejects(400, "s must be an object", validate.optional_object, { s = 3 }, "s")
        end)
    end)

    describe("only_fields", function()
        local allowed = { name = true, description = true }

        it("accepts bodies with allowed fields only", function()
            assert.has_no.errors(function() validate.only_fields({ name = "x" }, allowed) end)
            assert.has_no.errors(function() validate.only_fields({}, allowed) end)
        end)

        it("names every unknown field, sorted", function()
            rejects(400, "Unknown or read-only field(s): created_at, id, user_id", validate.only_fields,
                { user_id = "u", name = "x", id = 1, created_at = "t" }, allowed)
        end)
    end)
end)
