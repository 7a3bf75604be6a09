-- The agent registry: every file in scripts/agents/ is an agent, named after the
-- file. An agent module returns:
--   {
--     name = "claude",
--     description = "...",
--     available = function() -> true | false, reason   -- CLI installed, key set
--     command = function(ctx) -> { argv = {...}, env = {...}, stdin = "..." }
--         ctx = { prompt, repo_dir, tools_dir, settings }   (never a shell string)
--     parse = function(state, line) -> { {type=, data=}, ... } | nil
--         called for each stdout line; state is a table kept for the run
--     finish = function(state, res) -> { answer = "...", usage = {...}, cost_usd = n,
--                                        error = "message" | nil }
--         res = the exec result {code, signal, stdout, stderr, timed_out}
--   }
local host = require "host"

local _M = {}

local registry, names = {}, {}
for _, module_name in ipairs(host.list_scripts("agents")) do
    local agent = require(module_name)
    local name = module_name:match("^agents%.(.+)$")
    assert(type(agent) == "table" and agent.name == name,
        module_name .. ": an agent module must return a table whose name is its file name")
    for _, fn in ipairs({ "command", "parse", "finish" }) do
        assert(type(agent[fn]) == "function", module_name .. ": missing function " .. fn)
    end
    registry[name] = agent
    names[#names + 1] = name
end

function _M.get(name)
    return registry[name]
end

function _M.names()
    return names
end

-- {name = {available = bool, reason = ...}} for /health.
function _M.status()
    local out = {}
    for _, name in ipairs(names) do
        local agent = registry[name]
        local ok, reason = true, nil
        if agent.available then ok, reason = agent.available() end
        out[name] = { available = ok and true or false, reason = reason, description = agent.description }
    end
    return out
end

return _M
