-- GET /, GET /ping (as in the original) and GET /health (new).
local host = require "host"
local agents = require "app.agents"
local config = require "app.config"
local store = require "app.store"

local json = host.json

local _M = {}

function _M.root()
    return 200, {
        status = "success",
        message = "Claude Code Automation API",
        endpoints = json.array { "/ping", "/start-task", "/task-status", "/git-diff", "/create-pr" },
    }
end

function _M.ping()
    return 200, { status = "success", message = "pong", timestamp = host.now() }
end

-- Sandbox providers the host can use on this machine.
local function sandbox_providers()
    local bwrap = host.find_executable("bwrap")
    local ok, why = false, "bwrap is not installed"
    if bwrap then ok, why = require("app.sandbox.local").self_test() end
    return { ["local"] = { kind = "bubblewrap", available = ok == true, error = why,
        selected = config.get().sandbox_provider == "local" } }
end

function _M.health()
    -- ping -> true | nil, err (for the log) [, a message safe to show, e.g. a schema mismatch]
    local ok, err, public = store:ping()
    local body = {
        status = ok and "ok" or "unavailable",
        version = host.info.version,
        uptime_seconds = math.floor(host.now() - host.info.started_at),
        store = { backend = config.get().store, reachable = ok == true, problem = not ok and public or nil },
        sandbox_providers = sandbox_providers(),
        agents = agents.status(),
    }
    if not ok then
        host.log("warn", "health check: store unreachable", { error = tostring(err) })
        return 503, body
    end
    return 200, body
end

return _M
