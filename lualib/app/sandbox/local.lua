-- The local sandbox provider (the embedded default): bubblewrap on this machine.
-- Each exec runs in fresh user, pid, ipc and uts namespaces as an unprivileged
-- uid with every capability dropped; system directories are read-only, only the
-- sandbox's workspace is writable, /tmp and $HOME are private tmpfs, the process
-- dies with the host, and rlimits, cgroup limits (where the machine allows) and a
-- wall clock bound it. Network is on unless SANDBOX_NETWORK=none (git clone and
-- push always get it: they run without the agent, with the token).
local host = require "host"
local config = require "app.config"

local _M = { name = "local" }

local sandbox_mt = {}
sandbox_mt.__index = sandbox_mt

local OUTPUT_CAP = 8 * 1024 * 1024 -- per stream kept in the result; on_output sees everything
local SANDBOX_PATH = "/opt/aicode/bin:/opt/aicode/tools/node_modules/.bin:/usr/local/bin:/usr/bin:/bin"

-- The host user sandboxed processes run as (when aicode runs as root): the
-- sandbox's uid 1000 maps to it, so nothing the sandbox does acts as root.
local SANDBOX_HOST_UID = 65534

local ETC_FILES = { "alternatives", "ssl/certs", "ssl/openssl.cnf", "ca-certificates", "ca-certificates.conf",
    "hosts", "resolv.conf", "nsswitch.conf", "host.conf", "gai.conf", "localtime", "timezone",
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "bash.bashrc", "profile", "mime.types", "gitconfig" }

local function tools_root()
    return config.get().tools_dir
end

function _M.create(opts)
    local s = config.get()
    local name = "task-" .. tostring(opts.task_id) .. "-" .. host.random_hex(4)
    local dir = s.sandbox_root .. "/" .. name
    local self = setmetatable({
        id = "local:" .. name,
        name = name,
        dir = dir,
        workspace = dir .. "/workspace",
        repo_dir = "/workspace/repo",
        tools_dir = "/opt/aicode/tools",
        askpass = "/opt/aicode/bin/askpass.sh",
        procs = {},
        destroyed = false,
        network = s.sandbox_network ~= "none",
        limits = s.sandbox_limits,
    }, sandbox_mt)
    -- The root and the sandbox directory are traversable (0711) so the
    -- unprivileged sandbox user reaches its own workspace, which only it can read.
    for _, argv in ipairs({
        { "mkdir", "-p", "-m", "0711", s.sandbox_root },
        { "chmod", "0711", host.info.data_dir, s.sandbox_root },
        { "mkdir", "-m", "0711", dir },
        { "mkdir", "-m", "0700", self.workspace },
        { "chown", SANDBOX_HOST_UID .. ":" .. SANDBOX_HOST_UID, self.workspace },
    }) do
        local p, err = host.process.spawn { argv = argv, env = { PATH = "/usr/bin:/bin" } }
        if not p then return nil, "cannot create sandbox: " .. tostring(err) end
        if p:wait() ~= 0 then return nil, "cannot create sandbox directory (" .. argv[1] .. ")" end
    end
    return self
end

function sandbox_mt:bwrap_argv(opts)
    local tools = tools_root()
    local argv = {
        tools .. "/sandbox/launch.sh", self.name,
        opts.light and "0" or tostring(self.limits.memory_bytes), opts.light and "0" or tostring(self.limits.pids),
        tostring(SANDBOX_HOST_UID),
        "bwrap",
        "--unshare-user", "--uid", "1000", "--gid", "1000",
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--hostname", "aicode-sandbox",
        "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
        "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
        "--ro-bind", tools .. "/sandbox/etc/passwd", "/etc/passwd",
        "--ro-bind", tools .. "/sandbox/etc/group", "/etc/group",
    }
    -- Only what programs need from /etc (certificates, name resolution, locale);
    -- never the whole directory.
    for _, f in ipairs(ETC_FILES) do
        argv[#argv + 1] = "--ro-bind-try"
        argv[#argv + 1] = "/etc/" .. f
        argv[#argv + 1] = "/etc/" .. f
    end
    for _, a in ipairs({
        "--proc", "/proc", "--dev", "/dev",
        "--tmpfs", "/tmp", "--tmpfs", "/home",
        "--dir", "/home/agent",
        "--bind", self.workspace, "/workspace",
        "--ro-bind", tools .. "/sandbox", "/opt/aicode/bin",
    }) do
        argv[#argv + 1] = a
    end
    -- The agent CLIs (make agents); -try: the shell agent works without them.
    argv[#argv + 1] = "--ro-bind-try"
    argv[#argv + 1] = tools .. "/agents"
    argv[#argv + 1] = "/opt/aicode/tools"
    -- The sandbox's own root (a tmpfs holding the mount points) becomes read-only
    -- too: only /workspace, /tmp and $HOME stay writable.
    argv[#argv + 1] = "--remount-ro"
    argv[#argv + 1] = "/"
    local network = opts.network
    if network == nil then network = self.network end
    if not network then argv[#argv + 1] = "--unshare-net" end
    argv[#argv + 1] = "--chdir"
    argv[#argv + 1] = opts.cwd or "/workspace"
    argv[#argv + 1] = "--"
    for _, a in ipairs(opts.argv) do argv[#argv + 1] = a end
    return argv
end

local function append(buf, chunk)
    if buf.size < OUTPUT_CAP then
        buf[#buf + 1] = chunk:sub(1, OUTPUT_CAP - buf.size)
        buf.size = buf.size + #chunk
    end
end

function sandbox_mt:exec(opts)
    if self.destroyed then return nil, "sandbox destroyed" end
    local env = {
        PATH = SANDBOX_PATH, HOME = "/home/agent", LANG = "C.UTF-8", TERM = "dumb", NO_COLOR = "1",
        CI = "true", TMPDIR = "/tmp",
    }
    for k, v in pairs(opts.env or {}) do env[k] = v end
    local p, err = host.process.spawn {
        argv = self:bwrap_argv(opts),
        env = env,
        stdin = opts.stdin,
        rlimits = { cpu = self.limits.cpu_seconds, fsize = self.limits.file_bytes, core = 0 },
    }
    if not p then return nil, "cannot start sandboxed process: " .. tostring(err) end
    self.procs[p] = true
    local state = { timed_out = false }
    if opts.timeout_s then
        host.spawn(function()
            host.sleep(opts.timeout_s)
            if p:running() then
                state.timed_out = true
                p:kill()
            end
        end)
    end
    local out, errb = { size = 0 }, { size = 0 }
    while true do
        local data, stream = p:read()
        if not data then break end
        append(stream == "stdout" and out or errb, data)
        if opts.on_output then opts.on_output(stream, data) end
    end
    local code, signal = p:wait()
    self.procs[p] = nil
    out.size, errb.size = nil, nil
    return {
        code = code, signal = signal, timed_out = state.timed_out,
        stdout = table.concat(out), stderr = table.concat(errb),
    }
end

function sandbox_mt:write_file(path, content)
    local res, err = self:exec { argv = { "sh", "-c", 'cat > "$1"', "sh", path }, stdin = content, network = false }
    if not res then return nil, err end
    if res.code ~= 0 then return nil, "cannot write " .. path end
    return true
end

function sandbox_mt:read_file(path)
    local res, err = self:exec { argv = { "cat", "--", path }, network = false }
    if not res then return nil, err end
    if res.code ~= 0 then return nil, "cannot read " .. path end
    return res.stdout
end

-- Kills every process of this sandbox (the whole bwrap pid namespace goes with
-- each bwrap process, since it is the namespace's init).
function sandbox_mt:kill()
    for p in pairs(self.procs) do p:kill() end
end

function sandbox_mt:destroy()
    if self.destroyed then return end
    self.destroyed = true
    self:kill()
    _M.cleanup(self.name)
end

-- Runs `true` in a fresh sandbox: catches what would fail every task (bwrap
-- missing, user namespaces disabled, a data directory the unprivileged sandbox user
-- cannot traverse). Cached for a minute. -> true | nil, reason
local probe = { at = -math.huge }
function _M.self_test()
    local now = host.monotonic_ms()
    if now - probe.at < 60000 then return probe.ok, probe.err end
    probe.at = now
    local sb, err = _M.create { task_id = 0 }
    local ok = false
    if sb then
        local res, eerr = sb:exec { argv = { "true" }, network = false, timeout_s = 10 }
        ok = res and res.code == 0
        err = ok and nil or (eerr or ("sandboxed `true` failed: " .. (res and res.stderr or ""):sub(1, 200)))
        sb:destroy()
    end
    probe.ok, probe.err = ok or nil, err
    return probe.ok, probe.err
end

-- Removes a sandbox's leftovers by name (also used after a crash, from the
-- task's recorded container_id).
function _M.cleanup(name)
    if type(name) ~= "string" or not name:match("^task%-%d+%-%x+$") then return end
    local p = host.process.spawn {
        argv = { tools_root() .. "/sandbox/cleanup.sh", name, config.get().sandbox_root .. "/" .. name },
        env = { PATH = "/usr/bin:/bin" },
    }
    if p then p:wait() end
end

return _M
