-- CLI commands implemented in Lua (called by bin/aicode outside any request):
--   token USER_ID   -> JSON {"access_token","refresh_token","expires_in"}
--   check-config    -> "configuration ok" or a list of problems
local host = require "host"
local auth = require "app.auth"
local config = require "app.config"
local store = require "app.store"
local validate = require "app.validate"

local _M = {}

local commands = {}

function commands.token(user_id)
    if not validate.is_uuid(user_id) then
        return nil, "aicode token: --user must be a UUID (the Supabase auth user id)"
    end
    user_id = user_id:lower()
    local user, err = store:ensure_user(user_id, {})
    if not user then return nil, "aicode token: store error: " .. tostring(err) end
    return host.json.encode(auth.issue_pair(user_id))
end

function commands.check_config()
    local problems = config.problems()
    local ok, err = store:ping()
    local line = "store: " .. tostring(err)
    if not ok then
        local already = false
        for _, p in ipairs(problems) do
            if p == tostring(err) or p == line then already = true end
        end
        if not already then problems[#problems + 1] = line end
    end
    if #problems == 0 then return "configuration ok" end
    return nil, table.concat(problems, "\n")
end
commands["check-config"] = commands.check_config

-- Run by `serve` before listening: only the settings, not the store.
commands["validate-config"] = function()
    local problems = config.problems()
    if #problems == 0 then return "ok" end
    return nil, table.concat(problems, "\n")
end

function _M.run(cmd, ...)
    local fn = commands[cmd]
    if not fn then return nil, "unknown command " .. tostring(cmd) end
    return fn(...)
end

return _M
