-- Git, the safe way: repository URLs and branch names are validated before
-- anything runs; every command is an argv (never a shell string); the token
-- reaches git only through the askpass helper's environment, for clone and push,
-- so it never appears in a URL, an argument, .git/config, an event or a log.
local config = require "app.config"
local text_util = require "app.text"

local _M = {}

local NAME = "^[%w%-_%.]+$"

-- https://<host>[:port]/<owner>/<repo>[.git] on an allowed host.
-- Returns {url, host, owner, repo} or nil, message.
function _M.parse_repo_url(url)
    if type(url) ~= "string" or url == "" then return nil, "repo_url is required" end
    if #url > 300 or url:find("[%c%s]") then return nil, "repo_url contains invalid characters" end
    local s = config.get()
    local scheme, authority, path = url:match("^(%a[%w+.-]*)://([^/?#]*)(.*)$")
    if not scheme then return nil, "repo_url must be an https URL" end
    scheme = scheme:lower()
    if scheme ~= "https" and not (scheme == "http" and s.git_allow_http) then
        return nil, "repo_url must be an https URL"
    end
    if authority:find("@", 1, true) then return nil, "repo_url must not contain credentials" end
    if path:find("[?#]") then return nil, "repo_url must not have a query or fragment" end
    local host = authority:lower()
    if not s.git_allowed_hosts[host] then
        return nil, "repo_url host is not allowed (GIT_ALLOWED_HOSTS)"
    end
    local owner, repo = path:match("^/([^/]+)/([^/]+)/?$")
    if not owner then return nil, "repo_url must look like https://" .. host .. "/<owner>/<repo>" end
    repo = repo:gsub("%.git$", "")
    for _, part in ipairs({ owner, repo }) do
        if not part:match(NAME) or part:sub(1, 1) == "-" or part:sub(1, 1) == "." then
            return nil, "repo_url has an invalid owner or repository name"
        end
    end
    return { url = url, host = host, owner = owner, repo = repo, scheme = scheme }
end

-- `git check-ref-format --branch` rules, checked without running git.
function _M.valid_branch(b)
    if type(b) ~= "string" or b == "" or #b > 255 then return false end
    if b == "@" or b == "HEAD" or b:find("[%c%s~%^:%?%*%[\\\127]") then return false end
    if b:sub(1, 1) == "-" or b:sub(1, 1) == "/" or b:sub(-1) == "/" or b:sub(-1) == "." then return false end
    if b:find("..", 1, true) or b:find("@{", 1, true) or b:find("//", 1, true) then return false end
    if b:sub(-5) == ".lock" then return false end
    for comp in b:gmatch("[^/]+") do
        if comp:sub(1, 1) == "." or comp:sub(-5) == ".lock" then return false end
    end
    return true
end

-- Each sandbox provider places the askpass helper (tools/sandbox/askpass.sh) at
-- sandbox.askpass.

-- Environment for a git process that talks to the remote.
function _M.remote_env(sandbox, token)
    return {
        GIT_TERMINAL_PROMPT = "0",
        GIT_ASKPASS = sandbox.askpass,
        GIT_TOKEN = token or "",
        GIT_CONFIG_NOSYSTEM = "1",
    }
end

-- Common options: no credential helpers that could store the token, no file://.
local function git_argv(sandbox, ...)
    local argv = { "git", "-c", "credential.helper=", "-c", "core.askPass=" .. sandbox.askpass,
        "-c", "protocol.file.allow=never", "-c", "advice.detachedHead=false" }
    for _, a in ipairs({ ... }) do argv[#argv + 1] = a end
    return argv
end
_M.argv = git_argv

-- A short, readable reason from git's stderr, with anything secret-shaped removed.
function _M.reason(stderr)
    local lines = {}
    for line in (stderr or ""):gmatch("[^\n]+") do
        if line:match("^fatal:") or line:match("^error:") or line:match("^remote:") then
            lines[#lines + 1] = line
        end
    end
    local text = table.concat(lines, "; ")
    if text == "" then text = (stderr or ""):sub(-300) end
    text = text:gsub("https?://[^%s'\"]+", "<url>")
    return text_util.valid_utf8(text_util.clip(text, 500))
end

-- Clones and answers the commit checked out (the task's base). -> sha | nil, err
function _M.clone(sandbox, url, branch, token, timeout_s)
    local argv = git_argv(sandbox, "clone", "--branch", branch, "--single-branch", "--no-tags", "--", url,
        sandbox.repo_dir)
    -- clone, then rev-parse in the same sandboxed process: "$@" is the clone argv
    local script = { "bash", "-c", '"$@" && git -C "$0" rev-parse HEAD', sandbox.repo_dir }
    for _, a in ipairs(argv) do script[#script + 1] = a end
    local res, err = sandbox:exec {
        argv = script,
        env = _M.remote_env(sandbox, token),
        network = true,
        timeout_s = timeout_s,
    }
    if not res then return nil, err end
    if res.timed_out then return nil, "git clone timed out" end
    if res.code ~= 0 then return nil, "git clone failed: " .. _M.reason(res.stderr) end
    local head = res.stdout:match("(%x+)%s*$")
    if not head then return nil, "git clone failed: no commit checked out" end
    return head
end

local function local_env()
    local s = config.get()
    return { GIT_CONFIG_NOSYSTEM = "1", GIT_AUTHOR_NAME = s.git_bot_name, GIT_AUTHOR_EMAIL = s.git_bot_email,
        GIT_COMMITTER_NAME = s.git_bot_name, GIT_COMMITTER_EMAIL = s.git_bot_email }
end

-- Runs a local git command in the repository (no network, no token). Short git
-- commands skip the per-sandbox cgroup set-up (rlimits and the timeout still apply).
-- -> stdout | nil, err, exec_result
function _M.run(sandbox, args, opts)
    opts = opts or {}
    local argv = git_argv(sandbox, table.unpack(args))
    local res, err = sandbox:exec {
        argv = argv, cwd = sandbox.repo_dir, stdin = opts.stdin, network = false, timeout_s = opts.timeout_s or 300,
        env = local_env(), light = true,
    }
    if not res then return nil, err end
    if res.code ~= 0 then return nil, "git " .. args[1] .. " failed: " .. _M.reason(res.stderr), res end
    return res.stdout
end

-- Runs a fixed bash script of git commands in the repository in one sandboxed
-- process (each sandbox start costs ~15 ms). Arguments are positional ($1...),
-- never interpolated. -> stdout | nil, err, exec_result
function _M.script(sandbox, name, script, args, opts)
    opts = opts or {}
    local argv = { "bash", "-c", "set -euo pipefail\n" .. script, name }
    for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
    local res, err = sandbox:exec {
        argv = argv, cwd = sandbox.repo_dir, stdin = opts.stdin, network = false, timeout_s = opts.timeout_s or 300,
        env = local_env(), light = true,
    }
    if not res then return nil, err end
    if res.code ~= 0 then return nil, name .. " failed: " .. _M.reason(res.stderr), res end
    return res.stdout
end

return _M
