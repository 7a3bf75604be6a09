local helper = require "support.helper"

-- app.config reads the environment once, when it is loaded; each case loads it
-- afresh with host.env overrides (false = unset, so the real environment is ignored).
local NAMES = {
    "CORS_ORIGINS", "RATE_LIMIT_PER_MINUTE", "RATE_LIMIT_IP_PER_MINUTE", "TRUST_PROXY",
    "AUTH_TRUST_CLIENT_USER_ID", "SUPABASE_URL", "AICODE_SUPABASE_JWT_MODE", "JWKS_CACHE_SECONDS",
    "AICODE_STORE", "JWT_ACCESS_TOKEN_EXPIRE_MINUTES", "ENVIRONMENT", "SUPABASE_SERVICE_ROLE_KEY",
}

local function load_config(env)
    local overrides = {}
    for _, name in ipairs(NAMES) do overrides[name] = false end
    for k, v in pairs(env or {}) do overrides[k] = v end
    helper.fresh_host({ env = overrides, migrate = false })
    return require "app.config"
end

local function has_problem(config, pattern)
    for _, p in ipairs(config.problems()) do
        if p:find(pattern, 1, true) then return true end
    end
    return false
end

describe("app.config", function()
    describe("defaults", function()
        local config, s

        setup(function()
            config = load_config()
            s = config.get()
        end)

        it("has no problems", function()
            assert.are.same({}, config.problems())
        end)

        it("uses the documented defaults", function()
            assert.are.same({ "http://localhost:3000" }, s.cors_origins)
            assert.are.equal(600, s.rate_limit_user)
            assert.are.equal(120, s.rate_limit_ip)
            assert.is_false(s.trust_proxy)
            assert.is_false(s.trust_client_user_id)
            assert.is_nil(s.supabase_url)
            assert.is_false(s.supabase_hs256)
            assert.are.equal(600, s.jwks_cache_seconds)
            assert.are.equal("sqlite", s.store)
            assert.are.equal(3600, s.access_ttl)
            assert.are.equal("development", s.environment)
        end)

        it("returns integers for integer settings", function()
            assert.are.equal("integer", math.type(s.rate_limit_user))
            assert.are.equal("integer", math.type(s.access_ttl))
        end)

        it("has Supabase auth off", function()
            assert.is_false(config.supabase_auth_enabled())
        end)
    end)

    describe("valid values", function()
        it("reads integers and flags", function()
            local config = load_config {
                RATE_LIMIT_PER_MINUTE = "5", RATE_LIMIT_IP_PER_MINUTE = "0", TRUST_PROXY = "1",
                AUTH_TRUST_CLIENT_USER_ID = "1", JWT_ACCESS_TOKEN_EXPIRE_MINUTES = "30", ENVIRONMENT = "production",
            }
            local s = config.get()
            assert.are.same({}, config.problems())
            assert.are.equal(5, s.rate_limit_user)
            assert.are.equal(0, s.rate_limit_ip)
            assert.is_true(s.trust_proxy)
            assert.is_true(s.trust_client_user_id)
            assert.are.equal(1800, s.access_ttl)
            assert.are.equal("production", s.environment)
        end)

        it("treats flags other than 1 as off", function()
            local s = load_config({ TRUST_PROXY = "true", AUTH_TRUST_CLIENT_USER_ID = "yes" }).get()
            assert.is_false(s.trust_proxy)
            assert.is_false(s.trust_client_user_id)
        end)

        it("treats empty values as unset", function()
            local config = load_config { RATE_LIMIT_PER_MINUTE = "", CORS_ORIGINS = "" }
            assert.are.equal(600, config.get().rate_limit_user)
            assert.are.same({ "http://localhost:3000" }, config.get().cors_origins)
        end)

        it("splits and trims the CORS origin list", function()
            local config = load_config { CORS_ORIGINS = " https://a.example.com ,http://localhost:3001,, *" }
            assert.are.same({ "https://a.example.com", "http://localhost:3001", "*" }, config.get().cors_origins)
            assert.are.same({}, config.problems())
        end)

        it("normalises SUPABASE_URL and enables Supabase auth", function()
            local config = load_config { SUPABASE_URL = "https://abc.supabase.co//" }
            assert.are.equal("https://abc.supabase.co", config.get().supabase_url)
            assert.are.same({}, config.problems())
            assert.is_true(config.supabase_auth_enabled())
        end)

        it("allows plain http Supabase only on loopback", function()
            assert.are.same({}, load_config({ SUPABASE_URL = "http://127.0.0.1:54321" }).problems())
            assert.are.same({}, load_config({ SUPABASE_URL = "http://localhost:54321" }).problems())
        end)

        it("enables HS256 Supabase auth from the mode the host sets", function()
            local config = load_config { AICODE_SUPABASE_JWT_MODE = "hs256" }
            assert.is_true(config.get().supabase_hs256)
            assert.is_true(config.supabase_auth_enabled())
        end)
    end)

    describe("invalid values", function()
        it("reports a non-numeric limit and keeps the default", function()
            local config = load_config { RATE_LIMIT_PER_MINUTE = "lots" }
            assert.are.equal(600, config.get().rate_limit_user)
            assert.are.equal(1, #config.problems())
            assert.are.equal('RATE_LIMIT_PER_MINUTE must be an integer between 0 and 10000000 (got "lots")',
                config.problems()[1])
        end)

        it("reports negative, fractional and out-of-range numbers", function()
            assert.is_true(has_problem(load_config({ RATE_LIMIT_IP_PER_MINUTE = "-1" }), "RATE_LIMIT_IP_PER_MINUTE"))
            assert.is_true(has_problem(load_config({ RATE_LIMIT_PER_MINUTE = "1.5" }), "RATE_LIMIT_PER_MINUTE"))
            assert.is_true(has_problem(load_config({ JWKS_CACHE_SECONDS = "5" }), "JWKS_CACHE_SECONDS"))
            assert.is_true(has_problem(load_config({ JWKS_CACHE_SECONDS = "86401" }), "JWKS_CACHE_SECONDS"))
            local c = load_config { JWT_ACCESS_TOKEN_EXPIRE_MINUTES = "0" }
            assert.is_true(has_problem(c, "JWT_ACCESS_TOKEN_EXPIRE_MINUTES"))
            assert.are.equal(3600, c.get().access_ttl)
        end)

        it("quotes at most 40 characters of a bad value", function()
            local config = load_config { RATE_LIMIT_PER_MINUTE = ("9"):rep(100) }
            local p = config.problems()[1]
            assert.is_truthy(p:find(("9"):rep(40), 1, true))
            assert.is_falsy(p:find(("9"):rep(41), 1, true))
        end)

        it("reports CORS entries that are not origins", function()
            local config = load_config {
                CORS_ORIGINS = "http://localhost:3000,https://*.vercel.app,localhost,ftp://x.org",
            }
            assert.are.equal(3, #config.problems())
            assert.is_true(has_problem(config, "https://*.vercel.app"))
            assert.is_true(has_problem(config, "CORS_ORIGINS: not an origin (scheme://host[:port]): localhost"))
            assert.is_true(has_problem(config, "ftp://x.org"))
        end)

        it("reports an insecure or malformed SUPABASE_URL", function()
            assert.is_true(has_problem(load_config({ SUPABASE_URL = "http://abc.supabase.co" }), "SUPABASE_URL"))
            assert.is_true(has_problem(load_config({ SUPABASE_URL = "https://abc.supabase.co/rest/v1" }),
                "SUPABASE_URL"))
            assert.is_true(has_problem(load_config({ SUPABASE_URL = "http://10.0.0.1:54321" }), "SUPABASE_URL"))
        end)

        it("reports an unknown store", function()
            local config = load_config { AICODE_STORE = "mysql" }
            assert.is_true(has_problem(config, "AICODE_STORE must be 'sqlite' or 'supabase'"))
            assert.are.equal("sqlite", config.get().store)
        end)

        it("reports AICODE_STORE=supabase without the URL or the service-role key", function()
            local need = "AICODE_STORE=supabase needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY"
            assert.is_true(has_problem(load_config { AICODE_STORE = "supabase" }, need))
            assert.is_true(has_problem(load_config {
                AICODE_STORE = "supabase", SUPABASE_URL = "https://abc.supabase.co" }, need))
            assert.is_true(has_problem(load_config {
                AICODE_STORE = "supabase", SUPABASE_SERVICE_ROLE_KEY = "k" }, need))
            local config = load_config {
                AICODE_STORE = "supabase", SUPABASE_URL = "https://abc.supabase.co", SUPABASE_SERVICE_ROLE_KEY = "k" }
            assert.are.same({}, config.problems())
            assert.are.equal("supabase", config.get().store)
        end)
    end)

    describe("store selection", function()
        it("is sqlite by default, and with SUPABASE_URL alone (Supabase auth only)", function()
            assert.are.equal("sqlite", load_config().get().store)
            assert.are.equal("sqlite", load_config({ SUPABASE_URL = "https://abc.supabase.co" }).get().store)
            assert.are.equal("sqlite", load_config({ SUPABASE_SERVICE_ROLE_KEY = "k" }).get().store)
        end)

        it("is supabase when SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY are set", function()
            local config = load_config { SUPABASE_URL = "https://abc.supabase.co", SUPABASE_SERVICE_ROLE_KEY = "k" }
            assert.are.equal("supabase", config.get().store)
            assert.are.same({}, config.problems())
            -- Supabase auth keeps working alongside the store.
            assert.is_true(config.supabase_auth_enabled())
        end)

        it("AICODE_STORE=sqlite overrides a configured Supabase", function()
            local config = load_config { SUPABASE_URL = "https://abc.supabase.co", SUPABASE_SERVICE_ROLE_KEY = "k",
                AICODE_STORE = "sqlite" }
            assert.are.equal("sqlite", config.get().store)
            assert.are.same({}, config.problems())
        end)
    end)

    describe("checks", function()
        it("adds the problems of registered checks, in a fresh list each time", function()
            local config = load_config()
            local calls = 0
            config.add_check(function() calls = calls + 1; return "schema mismatch: x" end)
            config.add_check(function() return nil end)
            config.add_check(function() error("cannot yield here") end)
            local first = config.problems()
            assert.are.same({ "schema mismatch: x" }, first)
            first[#first + 1] = "appended by a caller"
            assert.are.same({ "schema mismatch: x" }, config.problems())
            assert.are.equal(2, calls)
        end)

        it("collects every problem at once", function()
            local config = load_config {
                RATE_LIMIT_PER_MINUTE = "x", RATE_LIMIT_IP_PER_MINUTE = "y", CORS_ORIGINS = "nope",
            }
            assert.are.equal(3, #config.problems())
        end)
    end)

    describe("secrets", function()
        it("cannot be read through host.env", function()
            local host = helper.fresh_host({ migrate = false })
            for _, name in ipairs({ "JWT_SECRET", "SUPABASE_JWT_SECRET", "DATABASE_URL", "E2B_API_KEY",
                "GITHUB_TOKEN", "DB_PASSWORD", "anthropic_api_key" }) do
                local ok, err = pcall(host.env, name)
                assert.is_false(ok, name)
                assert.matches("is a secret", err, 1, true)
            end
            assert.has_no.errors(function() host.env("PATH") end)
        end)
    end)
end)
