-- Authentication: our own HS256 access/refresh tokens (verified in C by
-- host.jwt with the algorithm pinned), and Supabase access tokens as proof of
-- identity when tokens are issued over HTTP.
local host = require "host"
local config = require "app.config"
local errors = require "app.errors"
local store = require "app.store"

local jwt = host.jwt

local _M = {}

-- The original API's messages (seed-contract §1.0), kept for the frontend.
function _M.bearer_token(req)
    local header = req.headers.authorization
    if not header then errors.unauthorized("Missing authorization header") end
    local scheme, token = header:match("^(%S+) (%S+)$")
    if not scheme then errors.unauthorized("Invalid authorization header format") end
    if scheme:lower() ~= "bearer" then errors.unauthorized("Invalid authentication scheme") end
    return token
end

-- Access tokens this VM has verified, so a client that sends the same token on
-- every request pays for the HMAC and the claims' JSON once. Key: the exact token
-- string; value: its verified claims and time claims. A hit is exactly what
-- host.jwt.verify(token, "access") would answer (host/src/jwt_verify.c, l_jwt.c):
--   * Everything but the time claims depends only on the token's bytes and the
--     server key, which is fixed for the process (host_jwt_configure runs once, at
--     start-up): the three segments, base64url, header, alg pin, HMAC, payload JSON,
--     the numeric exp/nbf/iat, type == "access" and a non-empty user_id. A token that
--     passed them once passes them again, so only successes are cached; a failure is
--     never cached and is verified again in C every time.
--   * The time claims are rechecked on every hit with the C verifier's rules, order,
--     leeway and messages (check_time_claims), against os.time(), which is the same
--     time(NULL) the C verifier reads: an expired token is refused in the same second,
--     with the same "Token has expired". jansson refuses NUL bytes in keys, so the
--     claims table holds the very exp/nbf/iat values the C verifier compared.
--   * Refresh and stream tokens never enter: they fail the "access" type check.
-- The user lookup (store:get_user) still runs on every request, so a deleted user
-- loses access at once. The cache lives in this module, so each worker VM has its
-- own, dropped with its Lua generation on reload; it is emptied whenever it reaches
-- TOKEN_CACHE_MAX entries (a few hundred bytes each: tokens we issue are short).
-- Cached claims tables are shared by the requests that hit them: read-only.
-- A lookup compares the full string only against tokens in the same hash chain of a
-- randomly seeded table, so it offers no practical timing oracle on cached tokens.
-- A host binary older than this file has no jwt.leeway: then nothing is cached.
local LEEWAY = math.tointeger(jwt.leeway)
local TOKEN_CACHE_MAX = LEEWAY and 256 or 0
local token_cache, token_cache_size = {}, 0
local clock = os.time

local function remember(token, claims)
    local exp, nbf, iat = math.tointeger(claims.exp), claims.nbf, claims.iat
    if nbf ~= nil then nbf = math.tointeger(nbf) end
    if iat ~= nil then iat = math.tointeger(iat) end
    -- C accepted them, so they are integral numbers; anything else is not cached.
    if not exp or (claims.nbf ~= nil and not nbf) or (claims.iat ~= nil and not iat) then return end
    if token_cache_size >= TOKEN_CACHE_MAX then
        if TOKEN_CACHE_MAX == 0 then return end
        token_cache, token_cache_size = {}, 0
    end
    token_cache[token] = { claims = claims, exp = exp, nbf = nbf, iat = iat }
    token_cache_size = token_cache_size + 1
end

-- The cached claims, or nil and the C verifier's message when the time claims fail now.
local function recheck(token, entry)
    local now = clock()
    local err
    if now > entry.exp + LEEWAY then
        err = "Token has expired"
    elseif entry.nbf and now < entry.nbf - LEEWAY then
        err = "Token is not yet valid"
    elseif entry.iat and now < entry.iat - LEEWAY then
        err = "Token is not yet valid"
    else
        return entry.claims
    end
    -- Out of its validity now: C would refuse it the same way, so it need not stay.
    token_cache[token] = nil
    token_cache_size = token_cache_size - 1
    return nil, err
end

-- Verifies an access token and that its user exists; returns the user id.
function _M.authenticate(token)
    local claims, err
    local entry = token_cache[token]
    if entry then
        claims, err = recheck(token, entry)
    else
        claims, err = jwt.verify(token, "access")
        if claims then remember(token, claims) end
    end
    if not claims then errors.unauthorized(err) end
    local user, serr = store:get_user(claims.user_id)
    if serr then errors.store_unavailable(serr) end
    if not user then errors.unauthorized("User not found") end
    return claims.user_id, claims
end

-- A short-lived "stream" token from a URL: valid only for the resource it was
-- issued for (scope), and only while its user exists.
function _M.authenticate_stream(token, scope)
    local claims, err = jwt.verify(token, "stream")
    if not claims then errors.unauthorized(err) end
    if claims.scope ~= scope then errors.unauthorized("Token is not valid for this resource") end
    local user, serr = store:get_user(claims.user_id)
    if serr then errors.store_unavailable(serr) end
    if not user then errors.unauthorized("User not found") end
    return claims.user_id
end

-- For specs: the number of cached tokens and the bound, and a replacement clock
-- (nil: os.time).
function _M._token_cache_size() return token_cache_size, TOKEN_CACHE_MAX end
function _M._set_token_clock(fn) clock = fn or os.time end

function _M.issue_pair(user_id)
    local access, expires_in = jwt.issue(user_id, "access")
    local refresh = jwt.issue(user_id, "refresh")
    return { access_token = access, refresh_token = refresh, expires_in = expires_in }
end

-- Supabase JWKS (ES256/RS256 keys), fetched over host.http and cached per VM;
-- the keys themselves live in C (host.jwt.set_jwks), shared by all workers.
local jwks_fetched_at = -math.huge
local jwks_next_attempt_at = -math.huge -- throttle for every fetch, success or failure
local jwks_ever_fetched = false
local RETRY_AFTER_FAILURE, REFETCH_AFTER_SUCCESS = 2, 10

local function refresh_jwks(force)
    local s = config.get()
    if not s.supabase_url then return end
    local now = host.monotonic_ms() / 1000
    if not force and jwks_ever_fetched and now - jwks_fetched_at < s.jwks_cache_seconds then return end
    -- Every attempt starts the throttle: a dead endpoint costs at most one outbound
    -- fetch per 2 s per worker, an unknown kid (a rotation, or garbage) one per 10 s.
    if now < jwks_next_attempt_at then return end
    jwks_next_attempt_at = now + RETRY_AFTER_FAILURE
    local res, err = host.http.request {
        url = s.supabase_url .. "/auth/v1/.well-known/jwks.json",
        timeout_ms = 5000,
        max_body = 256 * 1024,
        allow_http = true, -- operator-configured endpoint (config limits http to loopback)
    }
    if not res or res.status ~= 200 then
        host.log("warn", "cannot fetch Supabase JWKS", { error = err or ("status " .. res.status) })
        return
    end
    local ok, jerr = jwt.set_jwks(res.body)
    if not ok then
        host.log("warn", "invalid Supabase JWKS", { error = jerr })
        return
    end
    jwks_fetched_at = now
    jwks_next_attempt_at = now + REFETCH_AFTER_SUCCESS
    jwks_ever_fetched = true
end

-- Verifies a Supabase user access token; returns its claims or raises 401.
function _M.verify_supabase(token)
    local s = config.get()
    if not s.supabase_hs256 then refresh_jwks(false) end
    local claims, err = jwt.verify_supabase(token)
    if not claims and not s.supabase_hs256 and s.supabase_url then
        refresh_jwks(true) -- keys may have rotated
        claims, err = jwt.verify_supabase(token)
    end
    if not claims then
        -- No key set could be loaded: the identity provider is down, not the caller's fault.
        if not s.supabase_hs256 and not jwks_ever_fetched then
            errors.raise(503, "Supabase auth keys are unavailable; try again later")
        end
        errors.unauthorized(err)
    end
    return claims
end

return _M
