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

    it("counts an IPv6 client by its /64 network, an IPv4 one by its address", function()
        local rl, ctl = load_ratelimit({ RATE_LIMIT_IP_PER_MINUTE = "2" })
        assert.is_true((rl.check_ip("2001:db8:1:2::1")))
        assert.is_true((rl.check_ip("2001:0db8:0001:0002:ffff:ffff:ffff:fffe")))
        assert.is_false((rl.check_ip("2001:DB8:1:2:0:0:0:99"))) -- same /64, any spelling
        assert.is_true((rl.check_ip("2001:db8:1:3::1")))         -- the next /64
        assert.is_not_nil(ctl.shared["rl:ip:2001:db8:1:2::/64"])
        -- v4-mapped IPv6 is the IPv4 address
        assert.is_true((rl.check_ip("::ffff:10.0.0.7")))
        assert.is_true((rl.check_ip("10.0.0.7")))
        assert.is_false((rl.check_ip("::FFFF:10.0.0.7")))
        assert.are.equal("0:0:0:0::/64", rl.client_key("::1"))
        assert.are.equal("fe80:0:0:0::/64", rl.client_key("fe80::1%eth0"))
        -- not an address: counted as the text it is
        assert.are.equal("192.0.2.33", rl.client_key("64:ff9b::192.0.2.33"))
        for _, text in ipairs({ "unknown", "1:2:3", "1::2::3", "g::1", "a:b:c:d:e:f:1:2:3", "12345::1" }) do
            assert.are.equal(text, rl.client_key(text))
        end
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

-- With the Supabase store every host counts in the database (rate_limit_hit,
-- db/supabase/004 and 005). Two fake hosts here share one fake database that answers
-- the RPC as the SQL function does, on a clock the specs move for all of them.
describe("app.ratelimit on a store shared by several hosts", function()
    local URL = "https://proj.supabase.co"
    local KEY = "service-role-key-for-the-spec"
    local json = helper.core.json
    local db, ctls

    before_each(function()
        db = { rows = {}, calls = {}, down = false, now = 0, answer = nil }
        ctls = {}
    end)
    after_each(function()
        for _, ctl in ipairs(ctls) do ctl:cleanup() end
    end)

    -- POST /rest/v1/rpc/rate_limit_hit: one fixed window per key.
    local function rpc(call)
        db.calls[#db.calls + 1] = call
        if db.down then return nil, "connect" end
        local args = json.decode(call.body)
        if db.answer then return { status = 200, body = json.encode(db.answer(args)) } end
        local row = db.rows[args.key]
        if not row or row.start + args.window_seconds <= db.now then
            row = { start = db.now, count = 0 }
            db.rows[args.key] = row
        end
        row.count = row.count + 1
        return { status = 200, body = json.encode({ allowed = row.count <= args.max_hits,
            retry_after = math.max(1, math.ceil(row.start + args.window_seconds - db.now)) }) }
    end

    -- A host on that database: its app.ratelimit (bound to its own fake host).
    local function new_host(env)
        local e = { SUPABASE_URL = URL, SUPABASE_SERVICE_ROLE_KEY = KEY, AICODE_STORE = false }
        for k, v in pairs(env or {}) do e[k] = v end
        local host, ctl = helper.fresh_host({ env = e, migrate = false })
        ctl.secrets.SUPABASE_SERVICE_ROLE_KEY = KEY
        host.http.request = rpc
        ctls[#ctls + 1] = ctl
        return require "app.ratelimit", ctl
    end

    local function advance(seconds)
        db.now = db.now + seconds
        for _, ctl in ipairs(ctls) do ctl:advance(seconds) end
    end

    it("counts per-IP hits in the store: two hosts together allow the limit once", function()
        local a, actl = new_host({ RATE_LIMIT_IP_PER_MINUTE = "5" })
        local b, bctl = new_host({ RATE_LIMIT_IP_PER_MINUTE = "5" })
        for i = 1, 5 do
            local rl = i % 2 == 1 and a or b
            assert.is_true((rl.check_ip("203.0.113.7")), "request " .. i)
        end
        local ok, retry = b.check_ip("203.0.113.7")
        assert.is_false(ok)
        assert.are.equal(60, retry)
        assert.are.equal("integer", math.type(retry))
        assert.is_false((a.check_ip("203.0.113.7")))
        assert.are.equal(7, db.rows["rl:ip:203.0.113.7"].count)
        assert.are.equal(7, #db.calls)
        local call = db.calls[1]
        assert.are.equal("POST", call.method)
        assert.are.equal(URL .. "/rest/v1/rpc/rate_limit_hit", call.url)
        assert.are.same({ key = "rl:ip:203.0.113.7", window_seconds = 60, max_hits = 5 }, json.decode(call.body))
        -- Neither host counted it itself.
        assert.is_nil(actl.shared["rl:ip:203.0.113.7"])
        assert.is_nil(bctl.shared["rl:ip:203.0.113.7"])
        -- Another address has its own budget.
        assert.is_true((a.check_ip("203.0.113.8")))
    end)

    it("per-user limits are shared the same way, users and addresses never share a counter", function()
        local a = new_host({ RATE_LIMIT_PER_MINUTE = "2", RATE_LIMIT_IP_PER_MINUTE = "2" })
        local b = new_host({ RATE_LIMIT_PER_MINUTE = "2", RATE_LIMIT_IP_PER_MINUTE = "2" })
        assert.is_true((a.check_ip("10.0.0.1")))
        assert.is_true((b.check_ip("10.0.0.1")))
        assert.is_false((a.check_ip("10.0.0.1")))
        -- A user named like the address, or like an address key, is another counter.
        assert.is_true((a.check_user("10.0.0.1")))
        assert.is_true((b.check_user("ip:10.0.0.1")))
        assert.is_true((b.check_user("10.0.0.1")))
        assert.is_false((a.check_user("10.0.0.1")))
        assert.are.same({ "rl:ip:10.0.0.1", "rl:u:10.0.0.1", "rl:u:ip:10.0.0.1" },
            (function()
                local keys = {}
                for k in pairs(db.rows) do keys[#keys + 1] = k end
                table.sort(keys)
                return keys
            end)())
        assert.are.equal(3, db.rows["rl:ip:10.0.0.1"].count)
        assert.are.equal(3, db.rows["rl:u:10.0.0.1"].count)
    end)

    it("sends the store a key of at most 70 bytes whatever the client claims to be", function()
        local a = new_host({ RATE_LIMIT_IP_PER_MINUTE = "2" })
        local long = ("f"):rep(300)
        assert.is_true((a.check_ip(long)))
        assert.is_true((a.check_ip(long .. "different tail")))
        assert.is_false((a.check_ip(long)))
        local key = json.decode(db.calls[1].body).key
        assert.are.equal("rl:ip:" .. ("f"):rep(64), key)
        assert.are.equal(70, #key)
    end)

    it("a key the store refused is refused locally until its window ends, without asking again", function()
        local a, actl = new_host({ RATE_LIMIT_IP_PER_MINUTE = "2" })
        local b = new_host({ RATE_LIMIT_IP_PER_MINUTE = "2" })
        assert.is_true((a.check_ip("198.51.100.1")))
        assert.is_true((a.check_ip("198.51.100.1")))
        assert.is_false((a.check_ip("198.51.100.1")))
        assert.are.equal(3, #db.calls)
        for _ = 1, 100 do assert.is_false((a.check_ip("198.51.100.1"))) end
        assert.are.equal(3, #db.calls, "a refused client costs the database nothing more")
        assert.is_not_nil(actl.shared["rl:no:rl:ip:198.51.100.1"])
        -- Retry-After still counts down to the end of the store's window.
        advance(45.5)
        local ok, retry = a.check_ip("198.51.100.1")
        assert.is_false(ok)
        assert.are.equal(15, retry) -- ceil(14.5), as the store would say
        -- The other host asks once, then knows too.
        assert.is_false((b.check_ip("198.51.100.1")))
        assert.is_false((b.check_ip("198.51.100.1")))
        assert.are.equal(4, #db.calls)
        -- Once the Retry-After they gave has passed (B's, rounded up, ends half a
        -- second after the store's window), both ask the store again: a new window.
        advance(15)
        assert.is_true((a.check_ip("198.51.100.1")))
        assert.is_true((b.check_ip("198.51.100.1")))
        assert.is_false((a.check_ip("198.51.100.1")))
        assert.are.equal(7, #db.calls)
    end)

    it("never holds a refusal longer than the window, whatever the store says", function()
        local a = new_host({ RATE_LIMIT_IP_PER_MINUTE = "2" })
        db.answer = function() return { allowed = false, retry_after = 86400 } end
        local ok, retry = a.check_ip("198.51.100.2")
        assert.is_false(ok)
        assert.are.equal(60, retry)
        db.answer = nil
        advance(60)
        assert.is_true((a.check_ip("198.51.100.2")))
    end)

    it("falls back to the host's own counter when the store cannot answer, with one warning", function()
        local a, actl = new_host({ RATE_LIMIT_IP_PER_MINUTE = "3", RATE_LIMIT_PER_MINUTE = "3" })
        local b = new_host({ RATE_LIMIT_IP_PER_MINUTE = "3" })
        db.down = true
        -- Fails open to the local counter: still a limit, per host.
        for i = 1, 3 do assert.is_true((a.check_ip("192.0.2.1")), "request " .. i) end
        local ok, retry = a.check_ip("192.0.2.1")
        assert.is_false(ok)
        assert.are.equal(60, retry)
        assert.are.equal(4, actl.shared["rl:ip:192.0.2.1"].value)
        -- Only the first request paid for the failure: for STORE_BACKOFF seconds the
        -- store is not asked (per-user checks included), and the log has one line.
        assert.are.equal(1, #db.calls)
        assert.is_true((a.check_user("u1")))
        assert.are.equal(1, #db.calls)
        local warns = 0
        for _, l in ipairs(actl.logs) do
            if l.level == "warn" and l.msg:find("shared counter unavailable", 1, true) then
                warns = warns + 1
                assert.are.equal("unavailable", l.fields.error)
            end
        end
        assert.are.equal(1, warns)
        -- The other host degrades on its own (N hosts then allow N times the limit).
        for _ = 1, 3 do assert.is_true((b.check_ip("192.0.2.1"))) end
        assert.is_false((b.check_ip("192.0.2.1")))
        -- The store is asked again after STORE_BACKOFF seconds, and counts from there.
        db.down = false
        advance(a.STORE_BACKOFF)
        assert.is_true((a.check_ip("192.0.2.1")))
        assert.are.equal(1, db.rows["rl:ip:192.0.2.1"].count)
    end)

    it("a store error or an answer it cannot read is a fallback, never a refusal", function()
        local a, actl = new_host({ RATE_LIMIT_IP_PER_MINUTE = "1" })
        db.answer = function() return {} end
        assert.is_true((a.check_ip("192.0.2.9")))
        assert.is_not_nil(actl:logged("warn", "shared counter unavailable"))
        assert.is_false((a.check_ip("192.0.2.9"))) -- the local counter still limits
    end)
end)
