-- Typed errors for route handlers. A handler (or anything it calls) raises
-- errors.raise(status, message); app.server turns it into
-- {"error": message, "request_id": ...} with that status. Anything else that is
-- raised is a bug: logged with its traceback, answered with a generic 500.
local host = require "host"

local _M = {}

local error_mt = { __name = "app.error" }
error_mt.__tostring = function(e) return e.status .. ": " .. e.message end

function _M.new(status, message, headers)
    return setmetatable({ status = status, message = message, headers = headers }, error_mt)
end

function _M.raise(status, message, headers)
    error(_M.new(status, message, headers), 0)
end

function _M.is_error(v)
    return getmetatable(v) == error_mt
end

function _M.bad_request(message) _M.raise(400, message) end
function _M.unauthorized(message) _M.raise(401, message) end
function _M.not_found(message) _M.raise(404, message or "Not found") end
function _M.conflict(message) _M.raise(409, message) end

-- Passes a store result through; a failure (nil, err) becomes a 503 unless err is
-- one of the expected outcomes the caller handles itself ("conflict", "busy").
function _M.check_store(res, err)
    if res == nil and err ~= nil and err ~= "conflict" and err ~= "busy" then _M.store_unavailable(err) end
    return res, err
end

-- Turns a store failure (nil, err) into a 503; the driver's text goes to the log,
-- never to the client. Expected outcomes ("conflict", "not found") are returned
-- by the store as values, not errors, so they never reach this function.
function _M.store_unavailable(err)
    host.log("error", "store error", { error = tostring(err) })
    _M.raise(503, "Database unavailable")
end

return _M
