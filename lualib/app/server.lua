-- The request pipeline, called by the C host once per request in its own
-- coroutine: CORS → route → rate limit → auth → body → handler → JSON response.
-- Handlers return `status, body_table[, headers]` and raise app.errors for 4xx.
local host = require "host"
local config = require "app.config"
local cors = require "app.cors"
local errors = require "app.errors"
local ratelimit = require "app.ratelimit"
local response = require "app.response"
local router_mod = require "app.router"
local auth = require "app.auth"
local engine = require "app.engine"

local json = host.json

local _M = {}

local BODY_METHODS = { POST = true, PUT = true, PATCH = true }

-- Load phase: build the router from scripts/init.lua. A bad declaration fails
-- the whole generation, so a broken edit never replaces working code.
local app_routes = require "init"
local router = router_mod.new()
for _, r in ipairs(app_routes.routes) do
    local module_name, fn_name = r.handler:match("^(.+)%.([%w_]+)$")
    local mod = require(module_name)
    local fn = mod[fn_name]
    if type(fn) ~= "function" then
        error("route " .. r.method .. " " .. r.path .. ": handler " .. r.handler .. " is not a function")
    end
    r.fn = fn
    router:add(r.method, r.path, r)
    if r.unprefixed then
        router:add(r.method, (r.path:gsub("^/api", "")), r)
    end
end
_M.router = router

-- Behind a trusted proxy the client is the last X-Forwarded-For entry: the one
-- the proxy appended. Earlier entries come from the client and can be forged.
local function client_ip(req)
    local xff = config.get().trust_proxy and req.headers["x-forwarded-for"]
    if xff then
        return xff:match("([^,%s]+)%s*$") or req.remote_addr
    end
    return req.remote_addr
end

local function traceback(err)
    if errors.is_error(err) then return err end
    return { bug = true, message = host.traceback(tostring(err)) }
end

local function parse_body(req, route)
    if route.body == false then return end
    local body = req.body
    if body == nil or body == "" then
        req.json = nil
        return
    end
    local ctype = req.headers["content-type"] or ""
    local media = ctype:match("^%s*([^;%s]+)") or ""
    if media:lower() ~= "application/json" then
        errors.raise(415, "Content-Type must be application/json")
    end
    local value, err = json.decode(body)
    if value == nil and err then
        errors.bad_request("Invalid JSON: " .. err)
    end
    req.json = value
end

-- The query parameters of a request without a query string (read-only, shared).
local NO_QUERY = setmetatable({}, {
    __newindex = function() error("query parameters are read-only", 2) end,
    __metatable = false,
})

local function run(req)
    local method = req.method
    if method == "OPTIONS" and cors.is_preflight(req) then
        local h = cors.preflight_headers(req.headers.origin)
        if not h then errors.raise(403, "Origin not allowed") end
        return 204, "", h
    end

    local route, params, allowed = router:match(method, req.path)
    if not route then
        if params == "method_not_allowed" then
            errors.raise(405, "Method not allowed", { allow = table.concat(allowed, ", ") })
        end
        errors.not_found("Not found")
    end
    req.params = params

    local query = req.query
    req.query_params = (query == nil or query == "") and NO_QUERY or _M.parse_query(query)
    if route.auth == "user" or route.auth == "stream" then
        local user_id
        if route.auth == "stream" and not req.headers.authorization and req.query_params.token then
            -- EventSource cannot send headers: a short-lived token scoped to this
            -- resource may come in the query, for this kind of route only.
            user_id = auth.authenticate_stream(req.query_params.token, route.scope .. ":" .. tostring(params.id))
        else
            user_id = auth.authenticate(auth.bearer_token(req))
        end
        req.user_id = user_id
        local ok, retry = ratelimit.check_user(user_id)
        if not ok then errors.raise(429, "Rate limit exceeded", { ["retry-after"] = tostring(retry) }) end
    elseif route.rate ~= "none" then
        local ok, retry = ratelimit.check_ip(client_ip(req))
        if not ok then errors.raise(429, "Rate limit exceeded", { ["retry-after"] = tostring(retry) }) end
    end

    if BODY_METHODS[method] then parse_body(req, route) end
    local status, body, headers = route.fn(req)
    if type(status) == "table" then -- a raw response (e.g. static JSON, a stream)
        return status.status, status.body, status.headers, status.stream
    end
    return status, response.json_parts(body, headers)
end

local function unescape(s)
    s = s:gsub("+", " ")
    return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- "a=1&b=x%20y" -> {a = "1", b = "x y"} (first value wins).
function _M.parse_query(query)
    local params = {}
    if not query or query == "" then return params end
    for pair in query:gmatch("[^&]+") do
        local k, v = pair:match("^([^=]*)=?(.*)$")
        k = unescape(k)
        if k ~= "" and params[k] == nil then params[k] = unescape(v) end
    end
    return params
end

-- Called once per worker when this code becomes current (start-up, reload).
function _M.start(worker_index)
    engine.start(worker_index)
end

-- Entry point from C: returns status, body (a string), headers (a table the caller
-- must not change: it may be shared), user_id (for the access log) and, for a
-- streaming response, the stream function. Never raises: every failure becomes a
-- JSON error response. Results instead of a response table: nothing to allocate.
function _M.handle(req)
    local ok, status, body, headers, stream = xpcall(run, traceback, req)
    if not ok then
        local err = status
        local res
        if errors.is_error(err) then
            res = response.error(err.status, err.message, req.request_id, err.headers)
        else
            host.log("error", "unhandled error in route", { request_id = req.request_id,
                error = err.message, path = req.path })
            res = response.error(500, "Internal server error", req.request_id)
        end
        status, body, headers, stream = res.status, res.body, res.headers, nil
    end
    local origin = req.headers.origin
    local extra = origin ~= nil and cors.response_headers(origin)
    if extra then
        local h = {}
        for k, v in pairs(headers or {}) do h[k] = v end
        for k, v in pairs(extra) do h[k] = v end
        headers = h
    end
    return status, body, headers, req.user_id, stream
end

return _M
