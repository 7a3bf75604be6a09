-- Fixed-window rate limits: per user for authenticated routes (counted in the
-- store when it is shared by several hosts, so the limit holds across them), per
-- client IP for the others (counted by each process: host.shared, all its
-- worker threads). A limit of 0 disables that limiter.
local host = require "host"
local config = require "app.config"
local store = require "app.store"

local _M = {}

local WINDOW = 60

local function check(key, limit, shared)
    if limit <= 0 then return true end
    -- A store shared by several hosts counts for all of them; if it cannot answer,
    -- this process's own counter decides (failing closed would turn a database
    -- hiccup into an outage of every route).
    if shared and store.rate_limit_hit then
        local allowed, retry = store:rate_limit_hit(key, WINDOW, limit)
        if allowed ~= nil then
            if allowed then return true end
            return false, retry
        end
        host.log("warn", "rate limit: shared counter unavailable, using the local one", { error = tostring(retry) })
    end
    local count, remaining = host.shared.incr(key, 1, WINDOW)
    if count > limit then
        return false, math.max(1, math.ceil(remaining))
    end
    return true
end

-- Returns true, or false and the Retry-After seconds.
function _M.check_user(user_id)
    return check("rl:u:" .. user_id, config.get().rate_limit_user, true)
end

function _M.check_ip(ip)
    -- An address is at most 45 characters; anything longer is not one (it came
    -- from a forged header) and must not make the shared-counter key too long.
    return check("rl:ip:" .. tostring(ip):sub(1, 64), config.get().rate_limit_ip)
end

return _M
