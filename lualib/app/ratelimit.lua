-- Fixed-window rate limits (60 s): per user on authenticated routes, per client
-- IP on the others that are not exempt (POST /api/auth/token, /api/auth/refresh).
-- A limit of 0 disables that limiter.
--
-- Where hits are counted: in the store when it is shared by several hosts
-- (Supabase: store:rate_limit_hit, db/supabase/004 and 005), so each limit holds
-- for all the hosts together; otherwise in this process (host.shared, all its
-- worker threads).
--
-- Keys: "rl:u:<user id>" and "rl:ip:<address>", the same in the store and in
-- host.shared; the prefixes keep users and addresses apart. An address is cut to
-- 64 bytes, so a key stays short whatever a forged header says.
--
-- What it costs the store: one upsert per request that is counted (an anonymous
-- client can reach it only through the per-IP routes). A key the store refused is
-- not asked about again before its window ends: this process remembers the refusal
-- ("rl:no:<key>" in host.shared, for the Retry-After the store gave) and refuses
-- locally, so a client that keeps going past its limit costs the database nothing
-- more (at most one refused upsert per process and window).
--
-- When the store cannot answer, this process's own counter decides (failing closed
-- would turn a database hiccup into an outage of every route): one warning, then for
-- STORE_BACKOFF seconds the store is not asked at all, so an outage costs neither
-- every request a round trip (or a timeout) nor the log a line per request.
local host = require "host"
local config = require "app.config"
local store = require "app.store"

local _M = {}

local WINDOW = 60
local STORE_BACKOFF = 5
local STORE_DOWN = "rl:store-down"
local MAX_IP = 64

_M.WINDOW, _M.STORE_BACKOFF = WINDOW, STORE_BACKOFF

local function count_locally(key, limit)
    local count, remaining = host.shared.incr(key, 1, WINDOW)
    if count > limit then
        return false, math.max(1, math.ceil(remaining))
    end
    return true
end

-- The seconds left of a refusal the store gave (remembered under `nokey` by check
-- below, for the Retry-After it came with), or nil.
local function refused(nokey)
    if host.shared.get(nokey) == nil then return nil end
    -- incr by 0 reads the time left; should the entry have expired since get, it
    -- makes a 0 that lives a millisecond (and means "not refused").
    local value, remaining = host.shared.incr(nokey, 0, 0.001)
    if value < 1 then return nil end
    return math.max(1, math.ceil(remaining))
end

local function check(key, limit)
    if limit <= 0 then return true end
    if store.rate_limit_hit and host.shared.get(STORE_DOWN) == nil then
        local nokey = "rl:no:" .. key
        local left = refused(nokey)
        if left then return false, left end
        local allowed, retry = store:rate_limit_hit(key, WINDOW, limit)
        if allowed ~= nil then
            if allowed then return true end
            retry = math.min(math.max(math.tointeger(retry) or WINDOW, 1), WINDOW)
            host.shared.incr(nokey, 1, retry)
            return false, retry
        end
        if host.shared.incr(STORE_DOWN, 1, STORE_BACKOFF) == 1 then
            host.log("warn", "rate limit: shared counter unavailable, using the local one",
                { error = tostring(retry), retry_in_s = STORE_BACKOFF })
        end
    end
    return count_locally(key, limit)
end

-- Returns true, or false and the Retry-After seconds.
function _M.check_user(user_id)
    return check("rl:u:" .. user_id, config.get().rate_limit_user)
end

-- The groups of an IPv6 address in text form ("2001:db8::1"), eight of them, or nil
-- when it is not one this understands (an embedded IPv4 tail, garbage).
local function ipv6_groups(ip)
    local groups = {}
    local head, tail = ip:match("^(.-)::(.*)$")
    if head then
        if tail:find("::", 1, true) then return nil end -- "::" may appear once
        local h, t = {}, {}
        for g in head:gmatch("[^:]+") do h[#h + 1] = g end
        for g in tail:gmatch("[^:]+") do t[#t + 1] = g end
        if #h + #t > 7 then return nil end
        for _, g in ipairs(h) do groups[#groups + 1] = g end
        for _ = 1, 8 - #h - #t do groups[#groups + 1] = "0" end
        for _, g in ipairs(t) do groups[#groups + 1] = g end
    else
        for g in ip:gmatch("[^:]+") do groups[#groups + 1] = g end
    end
    if #groups ~= 8 then return nil end
    return groups
end

-- Who an address counts as: an IPv4 address itself (also when written inside IPv6,
-- "::ffff:10.0.0.1"), an IPv6 address its /64 network. A subscriber usually gets a
-- whole /64, so counting single IPv6 addresses would give one client 2^64 budgets.
-- Anything else (not an address: a forged header) counts as the text it is.
function _M.client_key(ip)
    ip = tostring(ip)
    if not ip:find(":", 1, true) then return ip end
    -- An IPv4 address inside IPv6 text (v4-mapped ::ffff:a.b.c.d, NAT64 64:ff9b::a.b.c.d)
    -- is that IPv4 client.
    local v4 = ip:match("^[%x:]*:(%d+%.%d+%.%d+%.%d+)$")
    if v4 then return v4 end
    local groups = ipv6_groups(ip)
    if not groups then return ip end
    local prefix = {}
    for i = 1, 4 do
        local g = groups[i]
        if not g:match("^%x%x?%x?%x?$") then return ip end
        prefix[i] = string.format("%x", tonumber(g, 16))
    end
    return table.concat(prefix, ":") .. "::/64"
end

function _M.check_ip(ip)
    -- An address is at most 45 characters; anything longer is not one (it came
    -- from a forged header) and must not make the key too long (host.shared refuses
    -- keys over 256 bytes; the store's is a primary key).
    return check("rl:ip:" .. _M.client_key(ip):sub(1, MAX_IP), config.get().rate_limit_ip)
end

return _M
