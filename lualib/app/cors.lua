-- CORS for the configured origin list (CORS_ORIGINS). Only listed origins are
-- echoed back; credentials are allowed, so "*" is answered with the concrete
-- origin rather than a wildcard (browsers reject "*" with credentials).
local config = require "app.config"

local _M = {}

local ALLOW_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
local ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, X-User-ID"
local MAX_AGE = "600"

local allowed, allow_any = {}, false
for _, origin in ipairs(config.get().cors_origins) do
    if origin == "*" then allow_any = true else allowed[origin:lower()] = true end
end

function _M.origin_allowed(origin)
    return origin ~= nil and (allow_any or allowed[origin:lower()] == true)
end

-- Headers to add to a normal response for this request's Origin (or nil).
function _M.response_headers(origin)
    if not _M.origin_allowed(origin) then return nil end
    return {
        ["access-control-allow-origin"] = origin,
        ["access-control-allow-credentials"] = "true",
        ["access-control-expose-headers"] = "Retry-After, X-Request-Id",
        ["vary"] = "Origin",
    }
end

-- A preflight is an OPTIONS request with Origin and Access-Control-Request-Method.
function _M.is_preflight(req)
    return req.method == "OPTIONS" and req.headers.origin ~= nil
        and req.headers["access-control-request-method"] ~= nil
end

function _M.preflight_headers(origin)
    local h = _M.response_headers(origin)
    if not h then return nil end
    h["access-control-allow-methods"] = ALLOW_METHODS
    h["access-control-allow-headers"] = ALLOW_HEADERS
    h["access-control-max-age"] = MAX_AGE
    return h
end

return _M
