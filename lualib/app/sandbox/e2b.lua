-- The E2B sandbox provider: the same interface as the local one (see
-- app.sandbox), over E2B's control plane and envd (app.e2b). The sandbox is tagged
-- with {app, task_id, user_id} so the reaper can find it after a crash, its time to
-- live is kept short and extended while the task runs, and every command's output
-- and exit code are also written to files in the sandbox, so a dropped stream loses
-- nothing: the client re-attaches to the running process, or reads the files.
local host = require "host"
local config = require "app.config"
local e2b = require "app.e2b"

local json = host.json

local _M = { name = "e2b" }

local sandbox_mt = {}
sandbox_mt.__index = sandbox_mt

local TTL_S, EXTEND_EVERY_S = 300, 60
local MAX_RECONNECTS = 5
local OUTPUT_CAP = 8 * 1024 * 1024

-- Runs argv with stdin from a file, stdout/stderr teed into files, and the exit code
-- written last. The command arrives as positional parameters: nothing is
-- interpolated into this script. stdout's tee ends the pipeline (bash waits for
-- it); stderr's runs in a process substitution that is waited for explicitly, so
-- neither file loses its last bytes when bash exits.
local WRAPPER = [[
export PATH="$HOME/.aicode-tools/bin:$PATH"
"$@" < "${AICODE_STDIN:-/dev/null}" 2> >(tee -a -- "$AICODE_ERR" >&2) | tee -a -- "$AICODE_OUT"
code=${PIPESTATUS[0]}
wait $! 2>/dev/null
echo "$code" > "$AICODE_EXIT"
exit "$code"
]]

local ASKPASS_SCRIPT = [[#!/bin/sh
case "$1" in
  Username*) echo "x-access-token" ;;
  *) echo "${GIT_TOKEN:-}" ;;
esac
]]

function _M.create(opts)
    local s = config.get()
    local sb, err = e2b.create(s.e2b_template, TTL_S, {
        app = "aicode", deployment = s.e2b_deployment, task_id = tostring(opts.task_id),
        user_id = tostring(opts.user_id), purpose = opts.purpose or "task",
    })
    if not sb then return nil, err end
    local self = setmetatable({
        id = "e2b:" .. sb.id,
        sb = sb,
        repo_dir = "/home/user/workspace/repo",
        tools_dir = "/home/user/.aicode-tools",
        askpass = "/home/user/.aicode-askpass.sh",
        pids = {},
        seq = 0,
        destroyed = false,
    }, sandbox_mt)
    -- Keep the sandbox alive while the task runs: a short TTL, extended, so a host
    -- that dies leaves a sandbox that expires on its own within minutes.
    host.spawn(function()
        while not self.destroyed do
            host.sleep(EXTEND_EVERY_S)
            if self.destroyed then break end
            local ok, why = e2b.set_timeout(sb.id, TTL_S)
            if not ok and why == "gone" then
                self.gone = true
                break
            end
        end
    end)
    local res, merr = self:exec { argv = { "mkdir", "-p", "/home/user/workspace", "/tmp/aicode" } }
    if res and res.code == 0 then
        -- git's credential prompt: the token comes from the one git process's env.
        local ok
        ok, merr = self:write_file(self.askpass, ASKPASS_SCRIPT)
        res = ok and self:exec { argv = { "chmod", "0755", self.askpass } } or nil
    end
    if not res or res.code ~= 0 then
        self:destroy()
        return nil, "cannot prepare the E2B sandbox: " .. tostring(merr or (res and res.stderr))
    end
    return self
end

-- Agents in E2B's stock `base` template: install the pinned CLI at start (a
-- custom template from e2b/ has them already).
local PACKAGES = { claude = "@anthropic-ai/claude-code", codex = "@openai/codex" }

function sandbox_mt:prepare_agent(name, notify)
    local pkg = PACKAGES[name]
    if not pkg then return true end
    local check = self:exec { argv = { "bash", "-lc", 'command -v "$0"', name == "claude" and "claude" or "codex" } }
    if check and check.code == 0 then return true end
    local version = config.get().agent_versions[pkg]
    notify("installing " .. pkg .. "@" .. tostring(version) .. " into the E2B sandbox (the template does not " ..
        "have it; build the template in e2b/ to skip this)")
    -- Into the user's own prefix: the sandbox user cannot write npm's global one.
    local res, err = self:exec { argv = { "npm", "install", "-g", "--prefix", "/home/user/.aicode-tools",
        "--no-fund", "--no-audit", pkg .. "@" .. version }, timeout_s = 600 }
    if not res then return nil, err end
    if res.code ~= 0 then return nil, "installing " .. pkg .. " failed: " .. res.stderr:sub(-300) end
    return true
end

local function collect(buf, chunk)
    if buf.size < OUTPUT_CAP then
        buf[#buf + 1] = chunk:sub(1, OUTPUT_CAP - buf.size)
    end
    buf.size = buf.size + #chunk
end

function sandbox_mt:exec(opts)
    if self.destroyed then return nil, "sandbox destroyed" end
    if self.gone then return nil, "the E2B sandbox expired or was killed" end
    self.seq = self.seq + 1
    local tag = "aicode-" .. self.sb.id .. "-" .. self.seq
    local base = "/tmp/aicode/" .. self.seq
    local env = {
        AICODE_OUT = base .. ".out", AICODE_ERR = base .. ".err", AICODE_EXIT = base .. ".exit",
        HOME = "/home/user", LANG = "C.UTF-8", TERM = "dumb", NO_COLOR = "1", CI = "true",
    }
    for k, v in pairs(opts.env or {}) do
        if type(v) ~= "string" then
            return nil, "E2B sandboxes cannot receive " .. k .. " as a secret: enable the model proxy " ..
                "(MODEL_PROXY_URL reachable from E2B)"
        end
        env[k] = v
    end
    if opts.stdin then
        local ok, err = e2b.upload(self.sb, base .. ".in", opts.stdin)
        if not ok then return nil, err end
        env.AICODE_STDIN = base .. ".in"
    end
    local args = { "-c", WRAPPER, "aicode" }
    for _, a in ipairs(opts.argv) do args[#args + 1] = a end
    local out, errb = { size = 0 }, { size = 0 }
    local seen = { stdout = 0, stderr = 0 }
    local function on_data(stream, bytes)
        seen[stream] = seen[stream] + #bytes
        collect(stream == "stdout" and out or errb, bytes)
        if opts.on_output then opts.on_output(stream, bytes) end
    end
    local files = { stdout = env.AICODE_OUT, stderr = env.AICODE_ERR }
    -- After a drop the output comes from the files instead of the stream (Connect
    -- replays nothing, so a stream alone would leave a gap): read from where we
    -- were, in order, exactly once.
    local from_files, poller = false, nil -- poller: nil | "running" | "stopping" | "stopped"
    local function catch_up()
        for _, stream in ipairs({ "stdout", "stderr" }) do
            local more = e2b.download(self.sb, files[stream], seen[stream])
            if more and more ~= "" then on_data(stream, more) end
        end
    end
    local function start_polling()
        if poller then return end
        poller = "running"
        host.spawn(function()
            while poller == "running" and not self.destroyed do
                catch_up()
                host.sleep(0.3)
            end
            poller = "stopped"
        end)
    end
    local timeout_ms = opts.timeout_s and opts.timeout_s * 1000 or 0
    -- A transient envd/proxy hiccup (unavailable) is retried before giving up.
    local st, code, msg
    for attempt = 1, 3 do
        st, code, msg = e2b.open_stream(self.sb, "process.Process/Start", {
            process = { cmd = "/bin/bash", args = args, envs = env, cwd = opts.cwd or "/home/user" },
            tag = tag,
            stdin = false,
        }, timeout_ms)
        if st or code ~= "unavailable" or attempt == 3 then break end
        host.sleep(0.5 * 2 ^ (attempt - 1))
    end
    if not st then return nil, self:explain("E2B could not start the command: " .. tostring(code) .. " " ..
        tostring(msg)) end
    local result, rcode, rmsg
    for attempt = 0, MAX_RECONNECTS do
        result, rcode, rmsg = e2b.follow(st, {
            on_start = function(pid) self.pids[tag] = pid end,
            on_data = function(stream, bytes) if not from_files then on_data(stream, bytes) end end,
        })
        -- A dropped stream, or envd/its proxy ending it as unavailable: the process
        -- keeps running in the sandbox; re-attach to learn when it ends.
        local reattach = rcode == "dropped" or rcode == "unavailable"
        if result or not reattach or self.destroyed or self.killed then break end
        if not from_files then
            from_files = true
            start_polling()
        end
        if attempt == MAX_RECONNECTS then break end
        host.sleep(math.min(2 ^ attempt * 0.5, 5))
        st, rcode, rmsg = e2b.open_stream(self.sb, "process.Process/Connect", { process = { tag = tag } }, 0)
        if not st then break end
    end
    self.pids[tag] = nil
    if not result and (rcode == "not_found" or rcode == "dropped" or rcode == "unavailable")
        and not self.destroyed and not self.killed then
        -- The process ended while we were away (envd keeps exits only 30 s): the
        -- exit code is in its file.
        local exit_text = e2b.download(self.sb, env.AICODE_EXIT)
        if exit_text then
            result = { exit_code = math.tointeger(tonumber(exit_text:match("%d+"))) }
            from_files = true
        end
    end
    if from_files then
        -- stop the poller, then read what is left, once
        if poller == "running" then poller = "stopping" end
        local waited = 0
        while poller == "stopping" and waited < 200 do
            host.sleep(0.05)
            waited = waited + 1
        end
        from_files = false
        catch_up()
    end
    out.size, errb.size = nil, nil
    if not result then
        if rcode == "deadline_exceeded" then
            return { code = nil, signal = 9, timed_out = true, stdout = table.concat(out), stderr = table.concat(errb) }
        end
        if self.killed then
            return { code = nil, signal = 9, stdout = table.concat(out), stderr = table.concat(errb) }
        end
        return nil, self:explain("E2B command failed: " .. tostring(rcode) .. " " .. tostring(rmsg))
    end
    return { code = result.exit_code, stdout = table.concat(out), stderr = table.concat(errb) }
end

-- A failure's text, made clear when the reason is that the sandbox is gone.
function sandbox_mt:explain(text)
    if e2b.exists(self.sb.id) == false then
        self.gone = true
        return "the E2B sandbox expired or was killed (" .. text .. ")"
    end
    return text
end

function sandbox_mt:write_file(path, content)
    return e2b.upload(self.sb, path, content)
end

function sandbox_mt:read_file(path)
    return e2b.download(self.sb, path)
end

function sandbox_mt:kill()
    self.killed = true
    for _, pid in pairs(self.pids) do e2b.signal(self.sb, pid, "SIGNAL_SIGKILL") end
end

function sandbox_mt:destroy()
    if self.destroyed then return end
    self.destroyed = true
    e2b.kill(self.sb.id)
end

-- Kills a sandbox left behind by a crashed run (recorded as its task's container_id).
function _M.cleanup(id)
    if type(id) == "string" and id ~= "" then e2b.kill(id) end
end

-- The orphan reaper: E2B sandboxes tagged by aicode whose task is not running.
-- It reads every page of the list (100 a page), up to REAP_MAX_PAGES pages a run so
-- that a misbehaving API (a next token that never ends) cannot hold it forever:
-- 5,000 sandboxes, well above E2B's concurrency caps (Pro 100, up to 1,100 with
-- add-ons). What a bounded or failed listing left unread is read on the next run.
-- One run at a time: a run that outlasts E2B_REAP_INTERVAL_S is not joined by another.
local REAP_MAX_PAGES = 50
local reaping = false

local function reap(task_status)
    -- Only this deployment's sandboxes: another one sharing the E2B key has its own tasks.
    local list, err, pages = e2b.list({ app = "aicode", deployment = config.get().e2b_deployment }, REAP_MAX_PAGES)
    if not list then return nil, err end
    if err then
        host.log("warn", "E2B orphan reaper: the sandbox list is incomplete, the rest waits for the next run",
            { error = err, pages = pages, listed = #list, max_pages = REAP_MAX_PAGES })
    end
    local killed = 0
    for _, sb in ipairs(list) do
        local meta = type(sb.metadata) == "table" and sb.metadata or {}
        local task_id = math.tointeger(tonumber(meta.task_id or ""))
        local status = task_id and task_status(task_id)
        -- Only a task run's sandbox is tied to its task's status; others (a pull
        -- request being pushed for a finished task) live on their short TTL.
        local is_run = meta.purpose == nil or meta.purpose == "task"
        if is_run and status ~= "running" then
            e2b.kill(sb.sandboxID)
            killed = killed + 1
        end
    end
    return killed
end

-- -> killed | nil, err
function _M.reap(task_status)
    if reaping then return 0 end
    reaping = true
    local ok, killed, err = pcall(reap, task_status)
    reaping = false
    if not ok then return nil, killed end
    return killed, err
end

_M.json = json
return _M
