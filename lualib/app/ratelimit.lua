-- Fixed-window rate limits shared by all worker threads (host.shared counters):
-- per user for authenticated routes, per client IP for the others. A limit of 0
-- disables that limiter.
local host = require "host"
local config = require "app.config"

local _M = {}

local WINDOW = 60

local function check(key, limit)
    if limit <= 0 then return true end
    local count, remaining = host.shared.incr(key, 1, WINDOW)
    if count > limit then
        return false, math.max(1, math.ceil(remaining))
    end
    return true
end

-- Returns true, or false and the Retry-After seconds.
function _M.check_user(user_id)
    return check("rl:u:" .. user_id, config.get().rate_limit_user)
end

function _M.check_ip(ip)
    -- An address is at most 45 characters; anything longer is not one (it came
    -- from a forged header) and must not make the shared-counter key too long.
    return check("rl:ip:" .. tostring(ip):sub(1, 64), config.get().rate_limit_ip)
end

return _M
