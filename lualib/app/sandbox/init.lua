-- Sandbox providers behind one interface, so the workflow never knows which one
-- runs it. A provider module returns { name = ..., create = function(opts) }.
--
--   sandbox, err = provider.create{ task_id = 42, user_id = "...", timeout_s = 1800 }
--   sandbox.id                 -- recorded as the task's container_id
--   sandbox.repo_dir           -- where the repository lives inside the sandbox
--   sandbox.tools_dir          -- agent CLIs, read-only
--   res, err = sandbox:exec{
--       argv = {...}, env = {NAME = string|host.secret}, cwd = "/workspace/repo",
--       stdin = "text", timeout_s = 600, network = true|false,
--       on_output = function(stream, chunk) end,   -- streamed as it arrives
--   }                          -- res = {code, signal, stdout, stderr, timed_out}
--   ok, err = sandbox:write_file(path, content)
--   content, err = sandbox:read_file(path)
--   sandbox:kill()             -- stops every process the sandbox runs (cancel)
--   sandbox:destroy()          -- kill + remove everything; idempotent
local config = require "app.config"

local _M = {}

function _M.provider(name)
    name = name or config.get().sandbox_provider
    return require("app.sandbox." .. name)
end

return _M
