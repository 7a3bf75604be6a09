local helper = require "support.helper"

local ALICE = "11111111-1111-4111-8111-111111111111"
local GHOST = "99999999-9999-4999-8999-999999999999"

describe("app.auth", function()
    local auth, store, host, ctl

    local function load(env)
        host, ctl = helper.fresh_host({ env = env })
        auth = require "app.auth"
        store = require "app.store"
        assert(store:ensure_user(ALICE, {}))
    end

    local function rejects(status, message, fn, ...)
        local err = helper.catch(fn, ...)
        assert.are.equal(status, err.status)
        assert.are.equal(message, err.message)
    end

    before_each(function() load() end)
    after_each(function() ctl:cleanup() end)

    describe("bearer_token (the original's messages)", function()
        local function req(value) return helper.request({ headers = { authorization = value } }) end

        it("returns the token", function()
            assert.are.equal("abc.def.ghi", auth.bearer_token(req("Bearer abc.def.ghi")))
        end)

        it("accepts the scheme in any case", function()
            assert.are.equal("tok", auth.bearer_token(req("bearer tok")))
            assert.are.equal("tok", auth.bearer_token(req("BEARER tok")))
        end)

        it("401 Missing authorization header", function()
            rejects(401, "Missing authorization header", auth.bearer_token, helper.request())
        end)

        it("401 Invalid authorization header format unless exactly two parts", function()
            for _, v in ipairs({ "Bearer", "Bearer ", "Bearer a b", "Bearer  tok", "", " Bearer tok",
                "Bearer tok " }) do
                rejects(401, "Invalid authorization header format", auth.bearer_token, req(v))
            end
        end)

        it("401 Invalid authentication scheme for anything but Bearer", function()
            rejects(401, "Invalid authentication scheme", auth.bearer_token, req("Basic dXNlcjpwYXNz"))
            rejects(401, "Invalid authentication scheme", auth.bearer_token, req("Token abc"))
        end)
    end)

    describe("authenticate", function()
        it("accepts an access token from jwt.issue for an existing user", function()
            local token = host.jwt.issue(ALICE, "access")
            local user_id, claims = auth.authenticate(token)
            assert.are.equal(ALICE, user_id)
            assert.are.equal("access", claims.type)
            assert.are.equal("integer", math.type(claims.exp))
            assert.are.equal("integer", math.type(claims.iat))
        end)

        it("refuses a refresh token", function()
            rejects(401, "Invalid token type. Expected access", auth.authenticate, host.jwt.issue(ALICE, "refresh"))
        end)

        it("refuses an expired token (beyond the 30 s leeway)", function()
            rejects(401, "Token has expired", auth.authenticate, helper.sign_jwt(helper.claims(ALICE, "access", -120)))
        end)

        it("accepts a token that expired within the leeway", function()
            assert.are.equal(ALICE, (auth.authenticate(helper.sign_jwt(helper.claims(ALICE, "access", -5)))))
        end)

        it("refuses a token signed with another secret", function()
            local forged = helper.sign_jwt(helper.claims(ALICE), { secret = ("x"):rep(40) })
            rejects(401, "Signature verification failed", auth.authenticate, forged)
        end)

        it("refuses alg none", function()
            local none = helper.sign_jwt(helper.claims(ALICE),
                { header = { alg = "none", typ = "JWT" }, signature = "" })
            local err = helper.catch(auth.authenticate, none)
            assert.are.equal(401, err.status)
        end)

        it("refuses a tampered payload", function()
            local token = host.jwt.issue(ALICE, "access")
            local h, _, s = token:match("^([^.]+)%.([^.]+)%.([^.]+)$")
            local evil = h .. "." .. helper.b64url(host.json.encode(helper.claims(GHOST))) .. "." .. s
            rejects(401, "Signature verification failed", auth.authenticate, evil)
        end)

        it("refuses garbage", function()
            rejects(401, "Invalid token", auth.authenticate, "not-a-token")
        end)

        it("refuses a token without user_id", function()
            local token = helper.sign_jwt({ type = "access", exp = os.time() + 60, iat = os.time() })
            rejects(401, "missing user_id", auth.authenticate, token)
        end)

        it("refuses a valid token for a user that does not exist", function()
            rejects(401, "User not found", auth.authenticate, host.jwt.issue(GHOST, "access"))
        end)

        it("answers 503 when the store fails", function()
            local token = host.jwt.issue(ALICE, "access")
            stub(store, "get_user").returns(nil, "disk I/O error")
            rejects(503, "Database unavailable", auth.authenticate, token)
            store.get_user:revert()
        end)
    end)

    describe("issue_pair", function()
        it("issues an access and a refresh token with expires_in", function()
            local pair = auth.issue_pair(ALICE)
            assert.are.equal(3600, pair.expires_in)
            assert.are.equal("integer", math.type(pair.expires_in))
            assert.are.equal(ALICE, host.jwt.verify(pair.access_token, "access").user_id)
            assert.are.equal(ALICE, host.jwt.verify(pair.refresh_token, "refresh").user_id)
            assert.is_nil(host.jwt.verify(pair.refresh_token, "access"))
        end)
    end)

    describe("verify_supabase", function()
        describe("with the HS256 secret", function()
            before_each(function()
                helper.configure_jwt(helper.SUPABASE_SECRET)
                load({ AICODE_SUPABASE_JWT_MODE = "hs256", SUPABASE_URL = false })
            end)
            after_each(function() helper.configure_jwt() end)

            local function supa(claims, o)
                o = o or {}
                o.secret = o.secret or helper.SUPABASE_SECRET
                return helper.sign_jwt(claims, o)
            end

            it("returns the claims of an authenticated user's token", function()
                local claims = auth.verify_supabase(supa({ sub = ALICE, role = "authenticated", aud = "authenticated",
                    email = "a@example.com", exp = os.time() + 60 }))
                assert.are.equal(ALICE, claims.sub)
                assert.are.equal("a@example.com", claims.email)
                assert.are.equal(0, #ctl.http_calls) -- no JWKS fetch in HS256 mode
            end)

            it("refuses the anon and service_role keys", function()
                for _, role in ipairs({ "anon", "service_role" }) do
                    rejects(401, "Token role must be authenticated", auth.verify_supabase,
                        supa({ role = role, iss = "supabase", exp = os.time() + 60 }))
                end
            end)

            it("refuses our own tokens and other audiences", function()
                rejects(401, "Signature verification failed", auth.verify_supabase, host.jwt.issue(ALICE, "access"))
                rejects(401, "Invalid token audience", auth.verify_supabase,
                    supa({ sub = ALICE, role = "authenticated", aud = "other", exp = os.time() + 60 }))
                rejects(401, "missing sub", auth.verify_supabase,
                    supa({ role = "authenticated", exp = os.time() + 60 }))
            end)

            it("refuses an expired Supabase token", function()
                rejects(401, "Token has expired", auth.verify_supabase,
                    supa({ sub = ALICE, role = "authenticated", exp = os.time() - 3600 }))
            end)
        end)

        describe("with SUPABASE_URL (JWKS)", function()
            local JWKS_URL = "https://proj.supabase.co/auth/v1/.well-known/jwks.json"

            before_each(function()
                load({ SUPABASE_URL = "https://proj.supabase.co", AICODE_SUPABASE_JWT_MODE = false })
            end)

            it("fetches the JWKS from the project and hands it to host.jwt", function()
                ctl:queue_http({ status = 200, body = '{"keys":[]}' })
                stub(host.jwt, "set_jwks").returns(true)
                stub(host.jwt, "verify_supabase").returns({ sub = ALICE, role = "authenticated" })
                local claims = auth.verify_supabase("token")
                assert.are.equal(ALICE, claims.sub)
                assert.are.equal(1, #ctl.http_calls)
                assert.are.equal(JWKS_URL, ctl.http_calls[1].url)
                assert.are.equal("GET", ctl.http_calls[1].method)
                assert.is_number(ctl.http_calls[1].timeout_ms)
                assert.is_number(ctl.http_calls[1].max_body)
                assert.stub(host.jwt.set_jwks).was.called_with('{"keys":[]}')
            end)

            it("caches the keys, refetches after JWKS_CACHE_SECONDS, and at most every 10 s on unknown keys", function()
                stub(host.jwt, "set_jwks").returns(true)
                stub(host.jwt, "verify_supabase").returns(nil, "Unknown signing key")
                ctl:queue_http({ status = 200, body = "{}" })
                rejects(401, "Unknown signing key", auth.verify_supabase, "t1")
                assert.are.equal(1, #ctl.http_calls) -- fresh fetch; the forced refetch is throttled
                ctl:advance(5)
                rejects(401, "Unknown signing key", auth.verify_supabase, "t2")
                assert.are.equal(1, #ctl.http_calls)
                ctl:advance(6) -- 11 s after the fetch: an unknown key may trigger one refetch
                ctl:queue_http({ status = 200, body = "{}" })
                rejects(401, "Unknown signing key", auth.verify_supabase, "t3")
                assert.are.equal(2, #ctl.http_calls)
                host.jwt.verify_supabase:revert()
                stub(host.jwt, "verify_supabase").returns({ sub = ALICE, role = "authenticated" })
                ctl:advance(600) -- cache expired: refreshed before verifying
                ctl:queue_http({ status = 200, body = "{}" })
                auth.verify_supabase("t4")
                assert.are.equal(3, #ctl.http_calls)
            end)

            it("logs and answers 503 (not the caller's fault) when no JWKS could ever be fetched", function()
                ctl:queue_http({ status = 503, body = "down" })
                ctl:queue_http("timeout")
                local err = helper.catch(auth.verify_supabase, helper.sign_jwt({ sub = ALICE }))
                assert.are.equal(503, err.status)
                assert.are.equal("Supabase auth keys are unavailable; try again later", err.message)
                local entry = ctl:logged("warn", "cannot fetch Supabase JWKS")
                assert.is_not_nil(entry)
                assert.are.equal("status 503", entry.fields.error)
                -- the forced refetch after the failed verify is throttled: one attempt only
                assert.are.equal(1, #ctl.http_calls)
                ctl:advance(11)
                err = helper.catch(auth.verify_supabase, helper.sign_jwt({ sub = ALICE }))
                assert.are.equal(503, err.status)
                assert.are.equal(2, #ctl.http_calls)
                assert.are.equal("timeout", ctl.logs[2].fields.error)
            end)

            -- A failed fetch starts the throttle too (one attempt per 2 s), or an
            -- unreachable JWKS endpoint would cost two outbound requests (up to
            -- 2 x 5 s) on every token request.
            it("throttles JWKS fetches while the endpoint is failing", function()
                for _ = 1, 6 do ctl:queue_http({ status = 503, body = "down" }) end
                for _ = 1, 3 do
                    helper.catch(auth.verify_supabase, helper.sign_jwt({ sub = ALICE }))
                    ctl:advance(1)
                end
                -- t=0 and t=2: one attempt per 2 s while failing, not two per request
                assert.are.equal(2, #ctl.http_calls)
            end)

            it("answers 401 (not 503) once keys were loaded, even if a later refetch fails", function()
                stub(host.jwt, "set_jwks").returns(true)
                stub(host.jwt, "verify_supabase").returns(nil, "Unknown signing key")
                ctl:queue_http({ status = 200, body = "{}" })
                rejects(401, "Unknown signing key", auth.verify_supabase, "t1")
                ctl:advance(11)
                ctl:queue_http("connect")
                rejects(401, "Unknown signing key", auth.verify_supabase, "t2")
                assert.are.equal(2, #ctl.http_calls)
            end)

            it("logs an invalid JWKS document and keeps the old keys", function()
                ctl:queue_http({ status = 200, body = "not json" })
                ctl:queue_http({ status = 200, body = '{"keys":"nope"}' })
                helper.catch(auth.verify_supabase, helper.sign_jwt({ sub = ALICE }))
                assert.is_not_nil(ctl:logged("warn", "invalid Supabase JWKS"))
            end)
        end)
    end)
end)
