-- host.jwt (host/src/l_jwt.c, host/src/jwt_verify.c) through host_core.so.
local helper = require "support.helper"

local USER = "11111111-1111-4111-8111-111111111111"

describe("host.jwt", function()
    local jwt, json = helper.core.jwt, helper.core.json

    local function parts(token)
        local h, p, s = token:match("^([%w_-]+)%.([%w_-]+)%.([%w_-]+)$")
        return h, p, s
    end

    local function b64url_decode(s)
        local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        local bits = s:gsub(".", function(c)
            local n = alphabet:find(c, 1, true) - 1
            local out = {}
            for i = 5, 0, -1 do out[#out + 1] = ((n >> i) & 1) == 1 and "1" or "0" end
            return table.concat(out)
        end)
        return (bits:gsub("%d%d%d%d%d%d%d%d", function(byte) return string.char(tonumber(byte, 2)) end)
            :gsub("[01]+$", ""))
    end

    describe("issue", function()
        it("issues HS256 tokens with user_id, type, exp and iat", function()
            local token, expires_in = jwt.issue(USER, "access")
            assert.are.equal(3600, expires_in)
            local h, p = parts(token)
            assert.is_not_nil(h)
            local header = json.decode(b64url_decode(h))
            assert.are.equal("HS256", header.alg)
            local claims = json.decode(b64url_decode(p))
            assert.are.equal(USER, claims.user_id)
            assert.are.equal("access", claims.type)
            assert.are.equal("integer", math.type(claims.exp))
            assert.are.equal(3600, claims.exp - claims.iat)
            assert.is_true(math.abs(claims.iat - os.time()) <= 2)
        end)

        it("gives refresh tokens the refresh lifetime", function()
            local token, expires_in = jwt.issue(USER, "refresh")
            local claims = jwt.verify(token, "refresh")
            assert.are.equal(7 * 86400, expires_in)
            assert.are.equal(7 * 86400, claims.exp - claims.iat)
        end)

        it("signs what the Lua HS256 implementation computes (same secret, same input)", function()
            local token = jwt.issue(USER, "access")
            local h, p, s = parts(token)
            assert.are.equal(s, helper.b64url(helper.hmac_sha256(helper.JWT_SECRET, h .. "." .. p)))
        end)

        it("raises for other token types and bad user ids", function()
            assert.has_error(function() jwt.issue(USER, "admin") end)
            assert.has_error(function() jwt.issue(("u"):rep(300), "access") end)
            assert.has_error(function() jwt.issue(nil, "access") end)
        end)
    end)

    describe("verify", function()
        it("round-trips issued tokens into claims", function()
            local claims = jwt.verify(jwt.issue(USER, "access"), "access")
            assert.are.equal(USER, claims.user_id)
            assert.are.equal("access", claims.type)
            assert.are.equal("integer", math.type(claims.iat))
        end)

        it("checks the expected type", function()
            local v, err = jwt.verify(jwt.issue(USER, "refresh"), "access")
            assert.is_nil(v)
            assert.are.equal("Invalid token type. Expected access", err)
            local v2, err2 = jwt.verify(jwt.issue(USER, "access"), "refresh")
            assert.is_nil(v2)
            assert.are.equal("Invalid token type. Expected refresh", err2)
        end)

        it("requires exp, with 30 s leeway", function()
            local now = os.time()
            assert.are.same({ nil, "Token has expired" },
                { jwt.verify(helper.sign_jwt(helper.claims(USER, "access", -31 - 5)), "access") })
            assert.is_table(jwt.verify(helper.sign_jwt(helper.claims(USER, "access", -20)), "access"))
            local v, err = jwt.verify(helper.sign_jwt({ user_id = USER, type = "access", iat = now }), "access")
            assert.is_nil(v)
            assert.are.equal("Invalid token", err)
        end)

        it("refuses exp that is not an integer NumericDate", function()
            for _, exp in ipairs({ "9999999999", 1e300, json.null }) do
                local v = jwt.verify(helper.sign_jwt({ user_id = USER, type = "access", exp = exp }), "access")
                assert.is_nil(v, tostring(exp))
            end
        end)

        it("refuses tokens from the future (iat / nbf beyond the leeway)", function()
            local now = os.time()
            local v, err = jwt.verify(helper.sign_jwt({ user_id = USER, type = "access", iat = now + 600,
                exp = now + 3600 }), "access")
            assert.is_nil(v)
            assert.are.equal("Token is not yet valid", err)
            local v2, err2 = jwt.verify(helper.sign_jwt({ user_id = USER, type = "access", nbf = now + 600,
                exp = now + 3600 }), "access")
            assert.is_nil(v2)
            assert.are.equal("Token is not yet valid", err2)
        end)

        it("refuses alg none, other algorithms and a missing alg", function()
            local claims = helper.claims(USER)
            for _, header in ipairs({
                { alg = "none", typ = "JWT" }, { alg = "None" }, { alg = "HS512" }, { alg = "RS256" },
                { alg = "ES256" }, { typ = "JWT" },
            }) do
                local token = helper.sign_jwt(claims, { header = header })
                local v, err = jwt.verify(token, "access")
                assert.is_nil(v, header.alg)
                assert.is_string(err)
            end
            local unsigned = helper.sign_jwt(claims, { header = { alg = "none" }, signature = "" })
            assert.is_nil(jwt.verify(unsigned, "access"))
            assert.is_nil(jwt.verify(unsigned:sub(1, -2), "access")) -- without the final dot
        end)

        it("refuses tampered tokens", function()
            local token = jwt.issue(USER, "access")
            local h, _, s = parts(token)
            local forged = h .. "." .. helper.b64url(json.encode(helper.claims("someone-else"))) .. "." .. s
            assert.are.same({ nil, "Signature verification failed" }, { jwt.verify(forged, "access") })
            local flipped = token:sub(1, -2) .. (token:sub(-1) == "A" and "B" or "A")
            assert.is_nil(jwt.verify(flipped, "access"))
        end)

        it("refuses tokens signed with another secret", function()
            local token = helper.sign_jwt(helper.claims(USER), { secret = ("z"):rep(40) })
            assert.are.same({ nil, "Signature verification failed" }, { jwt.verify(token, "access") })
        end)

        it("refuses malformed compact forms", function()
            local token = jwt.issue(USER, "access")
            for _, bad in ipairs({
                "", "a", "a.b", "a.b.c.d", token .. ".", "." .. token, token .. "=", token:gsub("%.", "..", 1),
                token .. " ", ("a"):rep(9000),
            }) do
                local v, err = jwt.verify(bad, "access")
                assert.is_nil(v, bad:sub(1, 40))
                assert.is_string(err)
                assert.is_nil(err:find(token, 1, true)) -- the token is never echoed
            end
        end)

        it("refuses duplicate claims (parser differential)", function()
            local now = os.time()
            local payload = string.format(
                '{"user_id":"%s","type":"refresh","type":"access","exp":%d,"iat":%d}', USER, now + 60, now)
            assert.is_nil(jwt.verify(helper.sign_jwt(payload), "access"))
        end)

        it("requires a non-empty user_id", function()
            local now = os.time()
            assert.are.same({ nil, "missing user_id" },
                { jwt.verify(helper.sign_jwt({ type = "access", exp = now + 60, user_id = "" }), "access") })
        end)
    end)

    describe("verify_supabase", function()
        after_each(function() helper.configure_jwt() end)

        it("is refused when no Supabase key is configured", function()
            assert.are.same({ nil, "Supabase auth not configured" },
                { jwt.verify_supabase(helper.sign_jwt({ sub = USER, role = "authenticated", exp = os.time() + 60 })) })
        end)

        it("verifies with the Supabase secret and checks role, sub and aud", function()
            helper.configure_jwt(helper.SUPABASE_SECRET)
            local function supa(c) return helper.sign_jwt(c, { secret = helper.SUPABASE_SECRET }) end
            local exp = os.time() + 60
            local claims = jwt.verify_supabase(supa({ sub = USER, role = "authenticated", aud = "authenticated",
                exp = exp }))
            assert.are.equal(USER, claims.sub)
            assert.is_table(jwt.verify_supabase(supa({ sub = USER, role = "authenticated",
                aud = { "x", "authenticated" }, exp = exp })))
            assert.are.same({ nil, "Token role must be authenticated" },
                { jwt.verify_supabase(supa({ sub = USER, role = "anon", exp = exp })) })
            assert.are.same({ nil, "missing sub" },
                { jwt.verify_supabase(supa({ role = "authenticated", exp = exp })) })
            assert.are.same({ nil, "Invalid token audience" },
                { jwt.verify_supabase(supa({ sub = USER, role = "authenticated", aud = "anon", exp = exp })) })
            -- our own server secret does not verify Supabase tokens, and vice versa
            assert.are.same({ nil, "Signature verification failed" },
                { jwt.verify_supabase(helper.sign_jwt({ sub = USER, role = "authenticated", exp = exp })) })
            assert.is_nil(jwt.verify(supa(helper.claims(USER)), "access"))
        end)
    end)

    describe("set_jwks", function()
        it("rejects documents that are not a JWKS", function()
            for _, doc in ipairs({ "", "not json", "[]", '{"keys":"x"}', '{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}' }) do
                local ok, err = jwt.set_jwks(doc)
                assert.is_nil(ok, doc)
                assert.is_string(err, doc)
            end
        end)
    end)

    describe("configure (test-only entry point)", function()
        after_each(function() helper.configure_jwt() end)

        it("refuses secrets shorter than 32 bytes and keeps the old configuration", function()
            local token = jwt.issue(USER, "access")
            local ok, err = helper.core.configure_jwt(("s"):rep(31))
            assert.is_nil(ok)
            assert.matches("32", err, 1, true)
            assert.is_table(jwt.verify(token, "access"))
        end)

        it("refuses a short Supabase secret", function()
            assert.is_nil((helper.core.configure_jwt(helper.JWT_SECRET, "short")))
        end)
    end)
end)
