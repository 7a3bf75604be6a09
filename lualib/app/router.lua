-- Path router. Patterns are literal segments and typed parameters:
--   "/api/projects/<int:id>/tasks"   -> params.id is a Lua integer
--   "/api/things/<name>"             -> params.name is the raw segment
-- match() answers the route, or why none matched ("not_found", or
-- "method_not_allowed" with the allowed methods, so the server can send 405).
local _M = {}
local router_mt = { __index = _M }

local MAX_INT_DIGITS = 18 -- stays inside int64 without overflow checks

local function compile(pattern)
    local segments = {}
    for seg in pattern:gmatch("[^/]+") do
        local kind, name = seg:match("^<(%a+):([%w_]+)>$")
        if kind then
            if kind ~= "int" then error("unknown parameter type '" .. kind .. "' in " .. pattern, 3) end
            segments[#segments + 1] = { param = name, kind = kind }
        else
            local plain = seg:match("^<([%w_]+)>$")
            if plain then
                segments[#segments + 1] = { param = plain, kind = "string" }
            else
                segments[#segments + 1] = { literal = seg }
            end
        end
    end
    return segments
end

function _M.new()
    -- exact: path -> method -> route (the common case, one table lookup)
    -- patterned: list of {segments, methods = {METHOD = route}}
    return setmetatable({ exact = {}, patterned = {}, by_pattern = {}, routes = {} }, router_mt)
end

function _M:add(method, pattern, route)
    assert(type(method) == "string" and type(pattern) == "string", "router:add(method, pattern, route)")
    local segments = compile(pattern)
    local is_exact = true
    for _, s in ipairs(segments) do
        if s.param then is_exact = false end
    end
    local slot
    if is_exact then
        slot = self.exact[pattern]
        if not slot then
            slot = {}
            self.exact[pattern] = slot
        end
    else
        local entry = self.by_pattern[pattern]
        if not entry then
            entry = { segments = segments, methods = {} }
            self.by_pattern[pattern] = entry
            self.patterned[#self.patterned + 1] = entry
        end
        slot = entry.methods
    end
    if slot[method] then error("duplicate route " .. method .. " " .. pattern, 2) end
    slot[method] = route
    self.routes[#self.routes + 1] = { method = method, path = pattern, route = route }
end

local function split(path)
    local parts, n = {}, 0
    for seg in path:gmatch("[^/]+") do
        n = n + 1
        parts[n] = seg
    end
    return parts, n
end

local function match_segments(segments, parts, n)
    if #segments ~= n then return nil end
    local params
    for i = 1, n do
        local s, part = segments[i], parts[i]
        if s.literal then
            if s.literal ~= part then return nil end
        else
            local value = part
            if s.kind == "int" then
                if not part:match("^%d+$") or #part > MAX_INT_DIGITS then return nil end
                value = math.tointeger(tonumber(part))
            end
            params = params or {}
            params[s.param] = value
        end
    end
    return params or {}
end

local function allowed_list(methods)
    local list = {}
    for m in pairs(methods) do list[#list + 1] = m end
    if methods.GET and not methods.HEAD then list[#list + 1] = "HEAD" end -- served by GET
    table.sort(list)
    return list
end

-- The params of a route without parameters: one shared table, read-only so that
-- no handler can leak a value into another request through it.
local NO_PARAMS = setmetatable({}, {
    __newindex = function() error("route params are read-only", 2) end,
    __metatable = false,
})

local SLASH = string.byte("/")

-- Returns route, params  |  nil, "not_found"  |  nil, "method_not_allowed", {methods}
function _M:match(method, path)
    if #path > 1 and path:byte(-1) == SLASH then path = path:sub(1, -2) end
    local slot = self.exact[path]
    if slot then
        local route = slot[method] or (method == "HEAD" and slot.GET)
        if route then return route, NO_PARAMS end
        return nil, "method_not_allowed", allowed_list(slot)
    end
    local parts, n = split(path)
    for _, entry in ipairs(self.patterned) do
        local params = match_segments(entry.segments, parts, n)
        if params then
            local route = entry.methods[method] or (method == "HEAD" and entry.methods.GET)
            if route then return route, params end
            return nil, "method_not_allowed", allowed_list(entry.methods)
        end
    end
    return nil, "not_found"
end

return _M
