-- The host prelude: runs once per VM with the real globals, before any script.
-- It builds the sandbox every script runs in (text chunks only, no io/os.execute/
-- debug/package.loadlib/string.dump, sealed globals) and a `require` that resolves
-- `host` to the C modules and everything else to lualib/ then scripts/.
-- Compiled into the binary so the host's Lua layer cannot drift from the C side.
local host, lualib_dir, scripts_dir, read_source, files = ...

local load, pcall, error, setmetatable, rawset, type, tostring, pairs =
    load, pcall, error, setmetatable, rawset, type, tostring, pairs

string.dump = nil
-- Scripts must not reach the real string table through ("").__index.
getmetatable("").__metatable = false

-- Tables scripts must not write to even with rawset (see env.rawset below).
local sealed = setmetatable({}, { __mode = "k" })

-- Read-only views: writes raise, so one script cannot change another's stdlib.
local function frozen(t, name)
    local view = {}
    sealed[view] = true
    return setmetatable(view, {
        __index = t,
        __newindex = function(_, k)
            error("attempt to modify read-only table '" .. name .. "' (key '" .. tostring(k) .. "')", 2)
        end,
        __pairs = function() return pairs(t) end,
        __metatable = false,
    })
end

local function copy(t)
    local c = {}
    for k, v in pairs(t) do c[k] = v end
    return c
end

local load_phase = true
local host_view = copy(host)
-- Assets (e.g. openapi.json) are readable while the generation loads, never at run time.
host_view.asset = function(rel)
    if not load_phase then error("host.asset is only available while scripts load", 2) end
    if type(rel) ~= "string" or rel:find("..", 1, true) or rel:sub(1, 1) == "/" then
        error("invalid asset path", 2)
    end
    local src = read_source(scripts_dir .. "/" .. rel)
    if not src then error("asset not found: " .. rel, 2) end
    return src
end
-- Module names of the scripts in one folder (e.g. "agents" -> {"agents.claude", ...}),
-- from the file list of this generation: adding an agent is adding a file.
host_view.list_scripts = function(folder)
    if type(folder) ~= "string" or not folder:match("^[%w_]+$") then error("invalid folder", 2) end
    local prefix = scripts_dir .. "/" .. folder .. "/"
    local names = {}
    for _, path in ipairs(files) do
        if path:sub(1, #prefix) == prefix then
            local rest = path:sub(#prefix + 1)
            local base = rest:match("^([%w_]+)%.lua$")
            if base and base ~= "init" then names[#names + 1] = folder .. "." .. base end
        end
    end
    table.sort(names)
    return names
end
for k, v in pairs(host_view) do
    if type(v) == "table" then host_view[k] = frozen(v, "host." .. k) end
end
host_view = frozen(host_view, "host")

local env = {}
for _, name in ipairs({ "assert", "error", "ipairs", "next", "pairs", "pcall", "xpcall", "select",
    "tonumber", "tostring", "type", "rawequal", "rawget", "rawlen", "rawset", "setmetatable",
    "getmetatable", "_VERSION" }) do
    env[name] = _G[name]
end
env.string = frozen(copy(string), "string")
env.table = frozen(copy(table), "table")
env.math = frozen(copy(math), "math")
env.utf8 = frozen(copy(utf8), "utf8")
env.os = frozen({ time = os.time, clock = os.clock, date = os.date }, "os")
-- The read-only views and the sealed globals work through __newindex, which plain
-- rawset bypasses: rawset(string, "format", f) or rawset(host.http, "request", f)
-- would replace the function for every later request on this VM, and
-- rawset(_ENV, k, v) would add a global. rawset stays available for scripts' own tables.
env.rawset = function(t, k, v)
    if sealed[t] then error("attempt to rawset a read-only table", 2) end
    return rawset(t, k, v)
end

local loaded, loading = { host = host_view }, {}

local function find(name)
    if type(name) ~= "string" or not name:match("^[%a_][%w_]*[%w_%.]*$") or name:find("..", 1, true) then
        return nil
    end
    local rel = name:gsub("%.", "/")
    for _, base in ipairs({ lualib_dir, scripts_dir }) do
        for _, suffix in ipairs({ ".lua", "/init.lua" }) do
            local path = base .. "/" .. rel .. suffix
            local src = read_source(path)
            if src then return src, path end
        end
    end
    return nil
end

local function require(name)
    local m = loaded[name]
    if m ~= nil then return m end
    if loading[name] then error("circular require of '" .. tostring(name) .. "'", 2) end
    local src, path = find(name)
    if not src then error("module '" .. tostring(name) .. "' not found", 2) end
    local chunk, err = load(src, "@" .. path, "t", env)
    if not chunk then error(err, 0) end
    loading[name] = true
    local ok, res = pcall(chunk, name)
    loading[name] = nil
    if not ok then error(res, 0) end
    if res == nil then res = true end
    loaded[name] = res
    return res
end
env.require = require

sealed[env] = true
setmetatable(env, {
    __index = function(_, k) error("undefined global '" .. tostring(k) .. "'", 2) end,
    __newindex = function(_, k) error("assignment to undeclared global '" .. tostring(k) .. "'", 2) end,
    __metatable = false,
})

-- Every file must at least compile, so a syntax error anywhere keeps the old
-- generation serving instead of surfacing on the first request that needs it.
for _, path in ipairs(files) do
    local src = read_source(path)
    if src then
        local chunk, err = load(src, "@" .. path, "t", env)
        if not chunk then error(err, 0) end
    end
end

local function finish_loading()
    load_phase = false
end

return require, finish_loading
