local helper = require "support.helper"

local function load_ratelimit(env)
    local _, ctl = helper.fresh_host({ env = env, migrate = false })
    return require "app.ratelimit", ctl
end

describe("app.ratelimit (fixed 60 s window on host.shared)", function()
    it("allows up to the limit, then refuses with Retry-After", function()
        local rl = load_ratelimit({ RATE_LIMIT_PER_MINUTE = "3" })
        for i = 1, 3 do assert.is_true((rl.check_user("u1")), "request " .. i) end
        local ok, retry = rl.check_user("u1")
        assert.is_false(ok)
        assert.are.equal(60, retry)
        assert.are.equal("integer", math.type(retry))
    end)

    it("counts in host.shared under a per-user key", function()
        local rl, ctl = load_ratelimit({ RATE_LIMIT_PER_MINUTE = "3" })
        rl.check_user("u1")
        rl.check_user("u1")
        assert.are.equal(2, ctl.shared["rl:u:u1"].value)
    end)

    it("Retry-After counts down to the end of the window", function()
        local rl, ctl = load_ratelimit({ RATE_LIMIT_PER_MINUTE = "1" })
        assert.is_true((rl.check_user("u1")))
        ctl:advance(45.5)
        local ok, retry = rl.check_user("u1")
        assert.is_false(ok)
        assert.are.equal(15, retry) -- ceil(14.5)
        ctl:advance(14.2)
        local _, last = rl.check_user("u1")
        assert.are.equal(1, last) -- never 0
    end)

    it("starts a new window after 60 s", function()
        local rl, ctl = load_ratelimit({ RATE_LIMIT_PER_MINUTE = "2" })
        rl.check_user("u1")
        rl.check_user("u1")
        assert.is_false((rl.check_user("u1")))
        ctl:advance(60)
        assert.is_true((rl.check_user("u1")))
        assert.is_true((rl.check_user("u1")))
        assert.is_false((rl.check_user("u1")))
    end)

    it("keeps users apart", function()
        local rl = load_ratelimit({ RATE_LIMIT_PER_MINUTE = "1" })
        assert.is_true((rl.check_user("u1")))
        assert.is_false((rl.check_user("u1")))
        assert.is_true((rl.check_user("u2")))
    end)

    it("limits IPs with their own setting and keys", function()
        local rl, ctl = load_ratelimit({ RATE_LIMIT_PER_MINUTE = "100", RATE_LIMIT_IP_PER_MINUTE = "2" })
        assert.is_true((rl.check_ip("10.0.0.1")))
        assert.is_true((rl.check_ip("10.0.0.1")))
        local ok, retry = rl.check_ip("10.0.0.1")
        assert.is_false(ok)
        assert.are.equal(60, retry)
        assert.is_true((rl.check_ip("10.0.0.2")))
        assert.is_true((rl.check_user("10.0.0.1"))) -- user and IP buckets never collide
        assert.is_not_nil(ctl.shared["rl:ip:10.0.0.1"])
        assert.is_not_nil(ctl.shared["rl:u:10.0.0.1"])
    end)

    -- With TRUST_PROXY=1 the IP comes from X-Forwarded-For, i.e. from the client, and
    -- host.shared.incr refuses keys over 256 bytes (host/src/l_core.c): a long
    -- header must not turn every unauthenticated request into a 500.
    it("copes with arbitrarily long client identifiers", function()
        local rl = load_ratelimit({ RATE_LIMIT_IP_PER_MINUTE = "2" })
        local long = ("a"):rep(300)
        local ok, allowed = pcall(rl.check_ip, long)
        assert.is_true(ok, tostring(allowed))
        assert.is_true(allowed)
    end)

    it("uses the documented defaults (600 per user, 120 per IP)", function()
        local rl = load_ratelimit({ RATE_LIMIT_PER_MINUTE = false, RATE_LIMIT_IP_PER_MINUTE = false })
        for _ = 1, 120 do assert.is_true((rl.check_ip("1.2.3.4"))) end
        assert.is_false((rl.check_ip("1.2.3.4")))
        for _ = 1, 600 do assert.is_true((rl.check_user("u"))) end
        assert.is_false((rl.check_user("u")))
    end)

    it("is disabled by a limit of 0 and then touches no counter", function()
        local rl, ctl = load_ratelimit({ RATE_LIMIT_PER_MINUTE = "0", RATE_LIMIT_IP_PER_MINUTE = "0" })
        for _ = 1, 1000 do
            assert.is_true((rl.check_user("u1")))
            assert.is_true((rl.check_ip("1.2.3.4")))
        end
        assert.is_nil(next(ctl.shared))
    end)
end)
