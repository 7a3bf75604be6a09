local helper = require "support.helper"

local function load_cors(origins)
    helper.fresh_host({ env = { CORS_ORIGINS = origins or false }, migrate = false })
    return require "app.cors"
end

describe("app.cors", function()
    describe("with the default origin list", function()
        local cors

        setup(function() cors = load_cors() end)

        it("allows the configured origin, case-insensitively", function()
            assert.is_true(cors.origin_allowed("http://localhost:3000"))
            assert.is_true(cors.origin_allowed("HTTP://LOCALHOST:3000"))
        end)

        it("refuses other and missing origins", function()
            assert.is_false(cors.origin_allowed("http://localhost:3001"))
            assert.is_false(cors.origin_allowed("http://localhost:3000.evil.com"))
            assert.is_false(cors.origin_allowed("null"))
            assert.is_false(cors.origin_allowed(nil))
        end)

        it("echoes an allowed origin with credentials and Vary", function()
            local h = cors.response_headers("http://localhost:3000")
            assert.are.same({
                ["access-control-allow-origin"] = "http://localhost:3000",
                ["access-control-allow-credentials"] = "true",
                ["access-control-expose-headers"] = "Retry-After, X-Request-Id",
                ["vary"] = "Origin",
            }, h)
        end)

        it("adds nothing for a disallowed origin", function()
            assert.is_nil(cors.response_headers("https://evil.example"))
            assert.is_nil(cors.response_headers(nil))
            assert.is_nil(cors.preflight_headers("https://evil.example"))
        end)

        it("recognises a preflight", function()
            assert.is_true(cors.is_preflight({ method = "OPTIONS", headers = {
                origin = "http://localhost:3000", ["access-control-request-method"] = "POST" } }))
        end)

        it("does not treat plain OPTIONS or other methods as a preflight", function()
            assert.is_false(cors.is_preflight({ method = "OPTIONS", headers = {} }))
            assert.is_false(cors.is_preflight({ method = "OPTIONS", headers = { origin = "http://localhost:3000" } }))
            assert.is_false(cors.is_preflight({ method = "POST", headers = {
                origin = "http://localhost:3000", ["access-control-request-method"] = "POST" } }))
        end)

        it("answers a preflight with methods, headers and max-age", function()
            local h = cors.preflight_headers("http://localhost:3000")
            assert.are.equal("http://localhost:3000", h["access-control-allow-origin"])
            assert.are.equal("GET, POST, PUT, DELETE, OPTIONS", h["access-control-allow-methods"])
            assert.matches("Authorization", h["access-control-allow-headers"], 1, true)
            assert.matches("Content-Type", h["access-control-allow-headers"], 1, true)
            assert.are.equal("600", h["access-control-max-age"])
            assert.are.equal("true", h["access-control-allow-credentials"])
        end)
    end)

    describe("with a list", function()
        it("allows each listed origin and nothing else", function()
            local cors = load_cors(" https://app.example.com , http://localhost:3001")
            assert.is_true(cors.origin_allowed("https://app.example.com"))
            assert.is_true(cors.origin_allowed("http://localhost:3001"))
            assert.is_false(cors.origin_allowed("http://localhost:3000"))
        end)
    end)

    describe("with *", function()
        it("allows any origin but echoes it instead of a wildcard (credentials)", function()
            local cors = load_cors("*")
            assert.is_true(cors.origin_allowed("https://anything.example"))
            assert.is_false(cors.origin_allowed(nil))
            local h = cors.response_headers("https://anything.example")
            assert.are.equal("https://anything.example", h["access-control-allow-origin"])
        end)
    end)
end)
