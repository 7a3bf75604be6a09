-- scripts/routes/auth.lua: POST /api/auth/token, POST /api/auth/refresh, GET /api/auth/verify.
local helper = require "support.helper"

local ALICE = "11111111-1111-4111-8111-111111111111"
local GHOST = "99999999-9999-4999-8999-999999999999"

describe("routes.auth", function()
    local host, ctl, json, auth_routes, store

    local function load(env)
        host, ctl = helper.fresh_host({ env = env })
        json = host.json
        auth_routes = require "routes.auth"
        store = require "app.store"
    end

    local function req(body, headers)
        return helper.with_body(helper.request({ method = "POST", headers = headers or {} }), body)
    end

    local rejects = helper.rejects

    local function supa(claims)
        return helper.sign_jwt(claims, { secret = helper.SUPABASE_SECRET })
    end

    after_each(function() ctl:cleanup() end)

    describe("POST /api/auth/token", function()
        describe("without Supabase (the default)", function()
            before_each(function()
                load({ AUTH_TRUST_CLIENT_USER_ID = false, SUPABASE_URL = false, AICODE_SUPABASE_JWT_MODE = false })
            end)

            it("403: tokens are not issued over HTTP without proof of identity", function()
                local err = rejects(403, nil, auth_routes.token, req({ user_id = ALICE }))
                assert.matches("aicode token", err.message, 1, true)
                assert.is_nil(store:get_user(ALICE)) -- and no user row appears
            end)

            it("still validates the body first", function()
                rejects(400, "user_id is required", auth_routes.token, req())
                rejects(400, "user_id is required", auth_routes.token, req({}))
                rejects(400, "user_id is required", auth_routes.token, req("[]"))
                rejects(400, "user_id is required", auth_routes.token, req({ user_id = "" }))
                rejects(400, "user_id is required", auth_routes.token, req({ user_id = 42 }))
                rejects(400, "user_id must be a UUID", auth_routes.token, req({ user_id = "alice" }))
            end)
        end)

        describe("with AUTH_TRUST_CLIENT_USER_ID=1 (the original behaviour)", function()
            before_each(function()
                load({ AUTH_TRUST_CLIENT_USER_ID = "1", SUPABASE_URL = false, AICODE_SUPABASE_JWT_MODE = false })
            end)

            it("issues a token pair with the original fields and creates the user", function()
                local status, body = auth_routes.token(req({ user_id = ALICE }))
                assert.are.equal(200, status)
                local text = json.encode(body)
                local decoded = json.decode(text)
                assert.are.equal(3600, decoded.expires_in)
                assert.are.equal("integer", math.type(decoded.expires_in))
                assert.are.equal(ALICE, host.jwt.verify(decoded.access_token, "access").user_id)
                assert.are.equal(ALICE, host.jwt.verify(decoded.refresh_token, "refresh").user_id)
                local keys = {}
                for k in pairs(decoded) do keys[#keys + 1] = k end
                table.sort(keys)
                assert.are.same({ "access_token", "expires_in", "refresh_token" }, keys)
                assert.is_not_nil(store:get_user(ALICE))
            end)

            it("logs a warning that does not contain the tokens", function()
                local _, body = auth_routes.token(req({ user_id = ALICE }))
                local entry = ctl:logged("warn", "without proof of identity")
                assert.is_not_nil(entry)
                assert.are.equal(ALICE, entry.fields.user_id)
                for _, e in ipairs(ctl.logs) do
                    local line = e.msg .. json.encode(e.fields or {})
                    assert.is_nil(line:find(body.access_token, 1, true))
                end
            end)

            it("lower-cases the user id", function()
                local _, body = auth_routes.token(req({ user_id = ALICE:upper() }))
                assert.are.equal(ALICE, host.jwt.verify(body.access_token, "access").user_id)
            end)

            it("503 when the user row cannot be written", function()
                stub(store, "ensure_user").returns(nil, "disk full")
                rejects(503, "Database unavailable", auth_routes.token, req({ user_id = ALICE }))
                store.ensure_user:revert()
            end)
        end)

        describe("with the Supabase HS256 secret", function()
            before_each(function()
                helper.configure_jwt(helper.SUPABASE_SECRET)
                load({ AUTH_TRUST_CLIENT_USER_ID = false, AICODE_SUPABASE_JWT_MODE = "hs256", SUPABASE_URL = false })
            end)
            after_each(function() helper.configure_jwt() end)

            local function bearer(token) return { authorization = "Bearer " .. token } end

            it("issues tokens for the Supabase user and records the email", function()
                local proof = supa({ sub = ALICE, role = "authenticated", aud = "authenticated",
                    email = "alice@example.com", exp = os.time() + 60 })
                local status, body = auth_routes.token(req({ user_id = ALICE }, bearer(proof)))
                assert.are.equal(200, status)
                assert.is_table(host.jwt.verify(body.access_token, "access"))
                assert.are.equal("alice@example.com", store:get_user(ALICE).email)
            end)

            it("matches sub case-insensitively", function()
                local proof = supa({ sub = ALICE:upper(), role = "authenticated", exp = os.time() + 60 })
                assert.are.equal(200, (auth_routes.token(req({ user_id = ALICE }, bearer(proof)))))
            end)

            it("403 when sub is another user", function()
                local proof = supa({ sub = GHOST, role = "authenticated", exp = os.time() + 60 })
                rejects(403, "user_id does not match the Supabase access token", auth_routes.token,
                    req({ user_id = ALICE }, bearer(proof)))
                assert.is_nil(store:get_user(ALICE))
            end)

            it("401 without a bearer token", function()
                rejects(401, "Missing authorization header", auth_routes.token, req({ user_id = ALICE }))
            end)

            it("401 for Supabase's anon and service_role keys", function()
                for _, role in ipairs({ "anon", "service_role" }) do
                    rejects(401, "Token role must be authenticated", auth_routes.token,
                        req({ user_id = ALICE }, bearer(supa({ role = role, exp = os.time() + 60 }))))
                end
            end)

            it("401 for our own access token presented as proof", function()
                local ours = host.jwt.issue(ALICE, "access")
                rejects(401, "Signature verification failed", auth_routes.token, req({ user_id = ALICE }, bearer(ours)))
            end)

            it("401 for an expired Supabase token", function()
                rejects(401, "Token has expired", auth_routes.token, req({ user_id = ALICE },
                    bearer(supa({ sub = ALICE, role = "authenticated", exp = os.time() - 3600 }))))
            end)
        end)
    end)

    describe("POST /api/auth/refresh", function()
        before_each(function()
            load()
            assert(store:ensure_user(ALICE, {}))
        end)

        it("issues a new access token (no rotation)", function()
            local refresh = host.jwt.issue(ALICE, "refresh")
            local status, body = auth_routes.refresh(req({ refresh_token = refresh }))
            assert.are.equal(200, status)
            assert.are.equal(3600, body.expires_in)
            assert.is_nil(body.refresh_token)
            assert.are.equal(ALICE, host.jwt.verify(body.access_token, "access").user_id)
            assert.are.equal('{"access_token":"' .. body.access_token .. '","expires_in":3600}', json.encode(body))
        end)

        it("400 refresh_token is required", function()
            rejects(400, "refresh_token is required", auth_routes.refresh, req())
            rejects(400, "refresh_token is required", auth_routes.refresh, req({}))
            rejects(400, "refresh_token is required", auth_routes.refresh, req({ refresh_token = "" }))
            rejects(400, "refresh_token is required", auth_routes.refresh, req({ refresh_token = 5 }))
        end)

        it("401 for an access token", function()
            rejects(401, "Invalid token type. Expected refresh", auth_routes.refresh,
                req({ refresh_token = host.jwt.issue(ALICE, "access") }))
        end)

        it("401 for expired, forged and garbled tokens", function()
            rejects(401, "Token has expired", auth_routes.refresh,
                req({ refresh_token = helper.sign_jwt(helper.claims(ALICE, "refresh", -3600)) }))
            rejects(401, "Signature verification failed", auth_routes.refresh,
                req({ refresh_token = helper.sign_jwt(helper.claims(ALICE, "refresh"), { secret = ("k"):rep(40) }) }))
            rejects(401, "Invalid token", auth_routes.refresh, req({ refresh_token = "garbage" }))
        end)

        it("401 User not found for a deleted user", function()
            rejects(401, "User not found", auth_routes.refresh,
                req({ refresh_token = host.jwt.issue(GHOST, "refresh") }))
        end)

        it("503 when the store fails", function()
            stub(store, "get_user").returns(nil, "disk I/O error")
            rejects(503, "Database unavailable", auth_routes.refresh,
                req({ refresh_token = host.jwt.issue(ALICE, "refresh") }))
            store.get_user:revert()
        end)
    end)

    describe("GET /api/auth/verify", function()
        before_each(function() load() end)

        it("answers {valid, user_id} for the authenticated user", function()
            local status, body = auth_routes.verify(helper.request({ user_id = ALICE }))
            assert.are.equal(200, status)
            assert.are.equal('{"user_id":"' .. ALICE .. '","valid":true}', json.encode(body))
        end)
    end)
end)
