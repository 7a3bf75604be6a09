-- The steps of the task workflow (scripts/workflows/task.lua calls them in order).
-- Each receives the run (app.run) and returns a value, or raises / returns nil, err
-- with a reason a user can read.
local host = require "host"
local agents = require "app.agents"
local config = require "app.config"
local git = require "app.git"
local results = require "app.results"
local sandbox_mod = require "app.sandbox"
local store = require "app.store"
local text = require "app.text"
local time = require "app.time"

local json = host.json

local _M = {}

function _M.create_sandbox(run)
    local provider = sandbox_mod.provider()
    local sandbox, err = provider.create { task_id = run.id, user_id = run.task.user_id, timeout_s = run.timeout_s }
    if not sandbox then return nil, err end
    run.sandbox = sandbox
    store:set_sandbox(run.id, run.owner, sandbox.id)
    return true
end

function _M.clone(run)
    local t = run.task
    local base, err = git.clone(run.sandbox, t.repo_url, t.target_branch, run.github_token,
        math.min(config.get().clone_timeout, run:remaining_s()))
    if not base then return nil, err end
    run.base_commit = base
    return true
end

-- A follow-up run starts from the task's current result: the stored patch is
-- applied on a fresh clone (3-way, so a moved base either merges or fails clearly).
function _M.apply_previous(run)
    local ok, err = git.run(run.sandbox, { "am", "--3way", "--keep-cr", "--committer-date-is-author-date" },
        { stdin = run.task.git_patch })
    if not ok then
        git.run(run.sandbox, { "am", "--abort" })
        return nil, "the previous changes no longer apply to " .. run.task.target_branch .. ": " .. err
    end
    return true
end

function _M.setup(run)
    local res, err = run.sandbox:exec {
        argv = { "bash", "-s" }, stdin = run.setup_script, cwd = run.sandbox.repo_dir,
        timeout_s = run:remaining_s(),
        on_output = function(stream, chunk) run:emit("output", { stream = stream, text = chunk, step = "setup" }) end,
    }
    if not res then return nil, err end
    if res.code ~= 0 then return nil, "setup script failed with status " .. tostring(res.code or res.signal) end
    return true
end

-- Splits a byte stream into lines across chunks.
local function line_splitter(on_line)
    local pending = ""
    return function(chunk, flush)
        pending = pending .. (chunk or "")
        while true do
            local i = pending:find("\n", 1, true)
            if not i then break end
            on_line(pending:sub(1, i - 1))
            pending = pending:sub(i + 1)
        end
        if flush and pending ~= "" then
            on_line(pending)
            pending = ""
        end
    end
end

function _M.run_agent(run)
    local agent = agents.get(run.task.agent)
    if not agent then return nil, "unknown agent " .. tostring(run.task.agent) end
    local available, why = true, nil
    if agent.available then available, why = agent.available() end
    if not available then return nil, "agent " .. agent.name .. " is not available: " .. tostring(why) end
    if run.sandbox.prepare_agent then
        local ok, err = run.sandbox:prepare_agent(agent.name, function(msg) run:emit("notice", { message = msg }) end)
        if not ok then return nil, err end
    end
    local cmd = agent.command {
        prompt = run.prompt, history = run.history, repo_dir = run.sandbox.repo_dir,
        tools_dir = run.sandbox.tools_dir, settings = config.get(),
        -- With the model proxy on: where the agent's CLI sends model requests, and
        -- the per-run token it authenticates with (instead of the real API key).
        model = run.model_token and { base = config.get().model_proxy_base, token = run.model_token } or nil,
    }
    local state = {}
    local split = line_splitter(function(line)
        local events = agent.parse(state, line)
        if events then
            for _, e in ipairs(events) do run:emit(e.type, e.data) end
        elseif line ~= "" then
            run:emit("output", { stream = "stdout", text = line })
        end
    end)
    local res, err = run.sandbox:exec {
        argv = cmd.argv, env = cmd.env, stdin = cmd.stdin, cwd = run.sandbox.repo_dir,
        timeout_s = run:remaining_s(),
        on_output = function(stream, chunk)
            if stream == "stdout" then
                split(chunk)
            else
                run:emit("output", { stream = "stderr", text = chunk })
            end
        end,
    }
    if not res then return nil, err end
    split(nil, true)
    run:check()
    local fin = agent.finish(state, res)
    if fin.usage or fin.cost_usd then
        run.metadata.usage = fin.usage
        run.metadata.cost_usd = fin.cost_usd
    end
    run.answer = fin.answer
    if fin.error then return nil, fin.error end
    return true
end

function _M.capture(run)
    local first_line = (run.prompt or ""):match("^[^\n]*"):sub(1, 72)
    local message = "aicode: " .. first_line .. "\n\nTask " .. run.id .. " (" .. run.task.agent .. ")\n"
    local res, err = results.capture(run.sandbox, run.base_commit, message)
    if not res then return nil, err end
    run.results = res
    return true
end

function _M.save(run)
    local r = run.results
    local metadata = run.task.execution_metadata or json.object()
    metadata.file_changes = r.file_changes
    metadata.usage = run.metadata.usage
    metadata.cost_usd = run.metadata.cost_usd
    metadata.base_commit = run.base_commit
    metadata.runs = (math.tointeger(metadata.runs) or 0) + 1
    local answer = run.answer
    if not r.changed then
        answer = (answer and answer ~= "" and (answer .. "\n\n") or "") .. "No changes were made to the repository."
    end
    run.finish = {
        status = "completed",
        commit_hash = r.commit_hash,
        git_diff = r.git_diff,
        git_patch = r.git_patch,
        changed_files = r.changed_files,
        execution_metadata = metadata,
        assistant_message = { role = "assistant", content = text.valid_utf8(run:sanitize(answer or "")),
            timestamp = time.iso8601() },
    }
    run:emit("result", {
        changed = r.changed, commit_hash = r.changed and r.commit_hash or nil,
        changed_files = r.changed_files, answer = text.valid_utf8(run:sanitize(answer or "")),
    })
    return true
end

return _M
