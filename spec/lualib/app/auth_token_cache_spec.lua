-- app.auth's per-VM cache of verified access tokens: a hit must answer exactly what
-- host.jwt.verify(token, "access") answers at that moment (host/src/jwt_verify.c),
-- failures are never cached, the user lookup still runs, and the cache is bounded.
local helper = require "support.helper"

local ALICE = "11111111-1111-4111-8111-111111111111"
local GHOST = "99999999-9999-4999-8999-999999999999"
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

describe("app.auth token cache", function()
    local auth, store, host, ctl, verify_calls

    before_each(function()
        host, ctl = helper.fresh_host()
        auth = require "app.auth"
        store = require "app.store"
        assert(store:ensure_user(ALICE, {}))
        -- Count the C verifications (auth reads host.jwt.verify at each call).
        local real = host.jwt.verify
        verify_calls = 0
        host.jwt.verify = function(...)
            verify_calls = verify_calls + 1
            return real(...)
        end
        host.jwt.real_verify = real
    end)

    after_each(function()
        auth._set_token_clock(nil)
        ctl:cleanup()
    end)

    -- The 401 message authenticate raises, or nil and the user id when it accepts.
    local function outcome(token)
        local ok, a = pcall(auth.authenticate, token)
        if ok then return nil, a end
        assert.are.equal(401, a.status, tostring(a.message))
        return a.message
    end

    -- What the C verifier says about `token` right now: nil when it accepts.
    local function c_outcome(token)
        local claims, err = host.jwt.real_verify(token, "access")
        if claims then return nil end
        return err
    end

    it("verifies a token in C once, then serves it from the cache with the same claims", function()
        local token = host.jwt.issue(ALICE, "access")
        local id1, claims1 = auth.authenticate(token)
        assert.are.equal(1, verify_calls)
        local id2, claims2 = auth.authenticate(token)
        local id3 = auth.authenticate(token)
        assert.are.equal(1, verify_calls)
        assert.are.equal(ALICE, id1)
        assert.are.equal(ALICE, id2)
        assert.are.equal(ALICE, id3)
        assert.are.same(host.jwt.real_verify(token, "access"), claims2)
        assert.are.equal(claims1, claims2)
        assert.are.equal(1, (auth._token_cache_size()))
    end)

    it("never caches a failure: each one is verified in C again", function()
        local expired = helper.sign_jwt(helper.claims(ALICE, "access", -120))
        local forged = helper.sign_jwt(helper.claims(ALICE), { secret = ("x"):rep(40) })
        local refresh = host.jwt.issue(ALICE, "refresh")
        local no_user_id = helper.sign_jwt({ type = "access", exp = os.time() + 60 })
        local cases = {
            { "not-a-token", "Invalid token" }, { expired, "Token has expired" },
            { forged, "Signature verification failed" }, { refresh, "Invalid token type. Expected access" },
            { no_user_id, "missing user_id" },
        }
        for round = 1, 3 do
            for i, case in ipairs(cases) do
                assert.are.equal(case[2], outcome(case[1]))
                assert.are.equal((round - 1) * #cases + i, verify_calls)
            end
        end
        assert.are.equal(0, (auth._token_cache_size()))
    end)

    it("refuses every tampered variant of a cached token, with the C verifier's message", function()
        local token = host.jwt.issue(ALICE, "access")
        assert.is_nil((outcome(token)))
        local variants = { token .. "A", token:sub(1, -2), token .. ".x", " " .. token, token:upper() }
        for i = 1, #token do
            local c = token:sub(i, i)
            local other = c == "." and "A" or B64:sub((B64:find(c, 1, true) % 64) + 1, (B64:find(c, 1, true) % 64) + 1)
            variants[#variants + 1] = token:sub(1, i - 1) .. other .. token:sub(i + 1)
        end
        for _, v in ipairs(variants) do
            local want = c_outcome(v)
            assert.is_not_nil(want, v)
            assert.are.equal(want, outcome(v))
        end
        assert.are.equal(1, (auth._token_cache_size())) -- only the genuine one
        assert.is_nil((outcome(token)))
    end)

    it("does not take a refresh or stream token for an access token, cached or not", function()
        local access = host.jwt.issue(ALICE, "access")
        assert.is_nil((outcome(access)))
        local refresh = host.jwt.issue(ALICE, "refresh")
        for _ = 1, 3 do
            assert.are.equal("Invalid token type. Expected access", outcome(refresh))
        end
        local stream = host.jwt.issue(ALICE, "stream", "task:1")
        assert.are.equal("Invalid token type. Expected access", outcome(stream))
        -- and the cached access token is not a stream token either
        local err = helper.catch(auth.authenticate_stream, access, "task:1")
        assert.are.equal("Invalid token type. Expected stream", err.message)
        assert.are.equal(1, (auth._token_cache_size()))
    end)

    it("refuses a cached token once it expires, in the same second as the C verifier", function()
        local token, now
        repeat -- a token valid up to the end of this second (exp + 30 s leeway = now)
            now = os.time()
            token = helper.sign_jwt({ user_id = ALICE, type = "access", iat = now - 100, exp = now - 30 })
            local accepted = outcome(token) == nil
        until accepted and os.time() == now
        assert.are.equal(1, (auth._token_cache_size()))
        local calls = verify_calls
        while os.time() == now do os.execute("sleep 0.02") end
        assert.are.equal("Token has expired", outcome(token))
        assert.are.equal(calls, verify_calls) -- refused by the cache, not by C
        assert.are.equal("Token has expired", c_outcome(token))
        assert.are.equal(0, (auth._token_cache_size())) -- and dropped
        assert.are.equal("Token has expired", outcome(token))
    end)

    it("applies the C verifier's time rules on a hit: exp, nbf and iat, with the leeway", function()
        -- Verdicts depend on (claim - now) only: a hit at now + d must say what C says now
        -- about the same token with every time claim moved by -d.
        local E, N, I = { -30, -1, 0, 5 }, { false, -40, 0, 30 }, { false, -40, 0, 30 }
        local D = { -61, -35, -31, -30, -29, -1, 0, 1, 29, 30, 31, 35, 61 }
        local compared = 0
        for _, e in ipairs(E) do
            for _, n in ipairs(N) do
                for _, i in ipairs(I) do
                    for _, d in ipairs(D) do
                        local now, want, got
                        repeat
                            now = os.time()
                            local function claims(shift)
                                return { user_id = ALICE, type = "access", exp = now + e - shift,
                                    nbf = n and now + n - shift or nil, iat = i and now + i - shift or nil }
                            end
                            local token = helper.sign_jwt(claims(0))
                            auth._set_token_clock(nil)
                            assert.is_nil((outcome(token))) -- valid now: cached
                            local calls = verify_calls
                            auth._set_token_clock(function() return now + d end)
                            got = outcome(token)
                            assert.are.equal(calls, verify_calls) -- a hit
                            want = c_outcome(helper.sign_jwt(claims(d)))
                        until os.time() == now
                        assert.are.equal(want, got, string.format("e=%d n=%s i=%s d=%d", e, tostring(n),
                            tostring(i), d))
                        compared = compared + 1
                    end
                end
            end
        end
        assert.are.equal(#E * #N * #I * #D, compared)
    end)

    it("stays bounded: emptied when it reaches its size, then refills", function()
        local _, max = auth._token_cache_size()
        local tokens = {}
        for n = 1, max + 10 do
            local user = string.format("00000000-0000-4000-8000-%012d", n)
            assert(store:ensure_user(user, {}))
            tokens[n] = host.jwt.issue(user, "access")
            assert.are.equal(user, (auth.authenticate(tokens[n])))
            local size = auth._token_cache_size()
            assert.is_true(size <= max)
            assert.are.equal(n <= max and n or n - max, size)
        end
        -- Dropped tokens are verified in C again, and still accepted.
        local calls = verify_calls
        assert.is_not_nil(auth.authenticate(tokens[1]))
        assert.are.equal(calls + 1, verify_calls)
    end)

    it("still looks the user up on every request", function()
        local token = host.jwt.issue(ALICE, "access")
        assert.are.equal(ALICE, (auth.authenticate(token)))
        local db = assert(host.sqlite.open(ctl.db_path))
        assert(db:run("DELETE FROM users WHERE id = ?", ALICE))
        db:close()
        assert.are.equal("User not found", outcome(token))
        assert.are.equal(1, verify_calls)
        assert(store:ensure_user(ALICE, {}))
        stub(store, "get_user").returns(nil, "disk I/O error")
        local err = helper.catch(auth.authenticate, token)
        assert.are.equal(503, err.status)
        store.get_user:revert()
        assert.are.equal("User not found", outcome(host.jwt.issue(GHOST, "access")))
    end)
end)

describe("app.auth on a host without jwt.leeway (an older binary)", function()
    it("caches nothing and verifies every request in C", function()
        local host, ctl = helper.fresh_host()
        host.jwt.leeway = nil
        local auth = require "app.auth"
        local store = require "app.store"
        assert(store:ensure_user(ALICE, {}))
        local real, calls = host.jwt.verify, 0
        host.jwt.verify = function(...)
            calls = calls + 1
            return real(...)
        end
        local token = host.jwt.issue(ALICE, "access")
        for n = 1, 3 do
            assert.are.equal(ALICE, (auth.authenticate(token)))
            assert.are.equal(n, calls)
        end
        assert.are.equal(0, (auth._token_cache_size()))
        ctl:cleanup()
    end)
end)

describe("host.jwt.leeway", function()
    it("is the C verifier's leeway: exp + leeway accepted, one second more refused", function()
        local jwt = helper.core.jwt
        assert.are.equal("integer", math.type(jwt.leeway))
        local now
        local ok_at, refused_at
        repeat
            now = os.time()
            ok_at = jwt.verify(helper.sign_jwt({ user_id = ALICE, type = "access", exp = now - jwt.leeway }), "access")
            refused_at = select(2, jwt.verify(helper.sign_jwt({ user_id = ALICE, type = "access",
                exp = now - jwt.leeway - 1 }), "access"))
        until os.time() == now
        assert.is_table(ok_at)
        assert.are.equal("Token has expired", refused_at)
    end)
end)
