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

-- Verifies an access token and that its user exists; returns the user id.
function _M.authenticate(token)
    local claims, err = jwt.verify(token, "access")
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
