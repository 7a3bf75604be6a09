-- A `host` table for busted specs: the real C modules that need no event loop
-- (json, jwt, sqlite, log, from build/lua/host_core.so) plus Lua fakes for the
-- loop-bound parts (http, sleep, clocks, shared counters), with every external
-- call recorded so specs can assert on it.
--
--   local fake_host = require "support.fake_host"
--   local host, ctl = fake_host.new { migrate = true }
--   fake_host.install(host)          -- package.preload["host"] now returns it
--
-- `ctl` drives and inspects the fakes:
--   ctl.http_calls            every host.http.request argument table, in order
--   ctl:queue_http(r)         next response: {status=, headers=, body=}, an error
--                             string ("timeout", ...) or function(call) -> res | nil, err
--   ctl.logs                  {level=, msg=, fields=} for every host.log call
--   ctl:logged(level, pat)    the first log entry whose msg matches `pat`, or nil
--   ctl.env                   overrides for host.env/has_env (false = unset)
--   ctl.executables           overrides for host.find_executable (false = absent)
--   ctl.sleeps                every host.sleep duration (sleep advances the clock)
--   ctl:advance(seconds)      moves host.now() and host.monotonic_ms() forward
--   ctl.shared                the host.shared dictionary: key -> {value, expires_at}
--   ctl.vault                 the host.vault entries: key -> {value, ttl, expires_at}
--   ctl.secrets               overrides for host.secret (a string, or false = unset)
--   ctl:secret_value(handle)  the value a host.secret handle stands for (what C sends)
--   ctl.spawned               every host.spawn call: {fn, args}
--   ctl:cleanup()             removes the temporary data dir
local core = require "host_core"
local lfs = require "lfs"

local _M = {}

-- Same rule as host/src/l_core.c:is_secret_name.
local SECRET_EXACT = { JWT_SECRET = true, SUPABASE_JWT_SECRET = true, DATABASE_URL = true }
local SECRET_SUFFIXES = { "_KEY", "_TOKEN", "_SECRET", "_PASSWORD" }

function _M.is_secret_name(name)
    if SECRET_EXACT[name] then return true end
    local upper = name:upper()
    for _, suffix in ipairs(SECRET_SUFFIXES) do
        if #upper >= #suffix and upper:sub(-#suffix) == suffix then return true end
    end
    return false
end

local function root()
    return assert(_M.root, "fake_host.root is not set (load spec/support/helper.lua first)")
end

local temp_dirs = {}

-- A fresh empty directory under /tmp.
function _M.temp_dir()
    local name = os.tmpname() -- creates a file; replace it by a directory of the same name
    os.remove(name)
    assert(lfs.mkdir(name))
    temp_dirs[#temp_dirs + 1] = name
    return name
end

local function remove_tree(path)
    local attr = lfs.symlinkattributes(path)
    if not attr then return end
    if attr.mode == "directory" then
        for entry in lfs.dir(path) do
            if entry ~= "." and entry ~= ".." then remove_tree(path .. "/" .. entry) end
        end
        lfs.rmdir(path)
    else
        os.remove(path)
    end
end
_M.remove_tree = remove_tree

-- Removes every directory made by temp_dir() (the helper calls it at exit).
function _M.cleanup_all()
    for _, dir in ipairs(temp_dirs) do remove_tree(dir) end
    temp_dirs = {}
end

local function read_file(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local s = f:read("a")
    f:close()
    return s
end
_M.read_file = read_file

-- The migration files, in version order.
function _M.migrations()
    local dir = root() .. "/db/sqlite"
    local files = {}
    for entry in lfs.dir(dir) do
        if entry:match("^%d+_.*%.sql$") then files[#files + 1] = dir .. "/" .. entry end
    end
    table.sort(files)
    return files
end

-- Applies db/sqlite/*.sql to the database at `path` with host_core's sqlite exec.
function _M.migrate(path)
    local db = assert(core.sqlite.open(path))
    for _, file in ipairs(_M.migrations()) do
        local ok, err = db:exec(assert(read_file(file)))
        if not ok then
            db:close()
            error("migration " .. file .. " failed: " .. tostring(err))
        end
    end
    db:close()
    return path
end

local function copy(t)
    local c = {}
    for k, v in pairs(t) do c[k] = v end
    return c
end

local LOG_LEVELS = { debug = true, info = true, warn = true, error = true }

-- Builds a host table and its controller. Options:
--   migrate    (default true) create data_dir/aicode.db with the schema applied
--   data_dir   use this directory instead of a fresh temporary one
--   now        initial wall clock (default: the real time)
--   env        initial env overrides
--   version, dev, workers
--   echo_log   also write log lines through the real C logger (stderr)
function _M.new(opts)
    opts = opts or {}
    local ctl = {
        http_calls = {},
        http_queue = {},
        logs = {},
        env = copy(opts.env or {}),
        executables = {},
        sleeps = {},
        shared = {},
        clock = { now = opts.now or os.time() + 0.0, mono = 1000000 },
    }
    local owns_dir = opts.data_dir == nil
    local data_dir = opts.data_dir or _M.temp_dir()
    ctl.data_dir = data_dir
    ctl.db_path = data_dir .. "/aicode.db"
    if opts.migrate ~= false and owns_dir then _M.migrate(ctl.db_path) end

    function ctl:advance(seconds)
        self.clock.now = self.clock.now + seconds
        self.clock.mono = self.clock.mono + math.floor(seconds * 1000 + 0.5)
    end

    function ctl:queue_http(response)
        self.http_queue[#self.http_queue + 1] = response
    end

    function ctl:logged(level, pattern)
        for _, entry in ipairs(self.logs) do
            if (level == nil or entry.level == level) and entry.msg:find(pattern) then return entry end
        end
        return nil
    end

    function ctl:cleanup()
        if owns_dir then remove_tree(self.data_dir) end
    end

    local host = {}

    host.json = copy(core.json)
    host.jwt = copy(core.jwt)
    host.sqlite = copy(core.sqlite)

    function host.log(level, msg, fields)
        if not LOG_LEVELS[level] then
            error("bad argument #1 to 'log' (invalid option '" .. tostring(level) .. "')", 2)
        end
        if type(msg) ~= "string" and type(msg) ~= "number" then
            error("bad argument #2 to 'log' (string expected, got " .. type(msg) .. ")", 2)
        end
        ctl.logs[#ctl.logs + 1] = { level = level, msg = tostring(msg), fields = fields }
        if opts.echo_log or os.getenv("SPEC_ECHO_LOG") == "1" then core.log(level, msg, fields) end
    end

    function host.now()
        return ctl.clock.now
    end

    function host.monotonic_ms()
        return ctl.clock.mono
    end

    -- No event loop here: sleeping records the duration and moves the clocks.
    function host.sleep(s)
        if type(s) ~= "number" or s < 0 or s > 86400 then
            error("bad argument #1 to 'sleep' (sleep duration out of range)", 2)
        end
        ctl.sleeps[#ctl.sleeps + 1] = s
        ctl:advance(s)
    end

    function host.env(name)
        if type(name) ~= "string" then error("bad argument #1 to 'env' (string expected)", 2) end
        if _M.is_secret_name(name) then
            error("host.env: '" .. name .. "' is a secret and is not readable from scripts", 2)
        end
        local v = ctl.env[name]
        if v == false then return nil end
        if v ~= nil then return tostring(v) end
        return os.getenv(name)
    end

    function host.has_env(name)
        if type(name) ~= "string" then error("bad argument #1 to 'has_env' (string expected)", 2) end
        local v = ctl.env[name]
        if v == false then return false end
        if v == nil then v = os.getenv(name) end
        return v ~= nil and v ~= ""
    end

    function host.uuid()
        local b = {}
        for i = 1, 16 do b[i] = math.random(0, 255) end
        b[7] = (b[7] & 0x0f) | 0x40
        b[9] = (b[9] & 0x3f) | 0x80
        return string.format("%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
            table.unpack(b))
    end

    function host.random_hex(n)
        if math.type(n) ~= "integer" or n < 1 or n > 256 then
            error("bad argument #1 to 'random_hex' (between 1 and 256 bytes)", 2)
        end
        local out = {}
        for i = 1, n do out[i] = string.format("%02x", math.random(0, 255)) end
        return table.concat(out)
    end

    function host.traceback(msg)
        return debug.traceback(msg, 2)
    end

    function host.find_executable(name)
        if type(name) ~= "string" or name:find("/", 1, true) then
            error("bad argument #1 to 'find_executable' (a bare program name)", 2)
        end
        local override = ctl.executables[name]
        if override == false then return nil end
        if override ~= nil then return override end
        for dir in (os.getenv("PATH") or ""):gmatch("[^:]+") do
            local path = dir .. "/" .. name
            local attr = lfs.attributes(path)
            if attr and attr.mode == "file" and attr.permissions:find("x") then return path end
        end
        return nil
    end

    -- host.shared: fixed-window counters on the fake clock (host/src/l_core.c semantics).
    host.shared = {}

    function host.shared.incr(key, by, ttl)
        if type(key) ~= "string" then error("bad argument #1 to 'incr' (string expected)", 2) end
        if #key > 256 then error("bad argument #1 to 'incr' (key too long)", 2) end
        by = by or 1
        ttl = ttl or 60
        if ttl <= 0 then error("bad argument #3 to 'incr' (ttl must be positive)", 2) end
        local now = ctl.clock.now
        local e = ctl.shared[key]
        if e and e.expires_at <= now then e = nil end
        if not e then
            e = { value = 0, expires_at = now + ttl }
            ctl.shared[key] = e
        end
        e.value = e.value + by
        return e.value, e.expires_at - now
    end

    function host.shared.get(key)
        if type(key) ~= "string" then error("bad argument #1 to 'get' (string expected)", 2) end
        local e = ctl.shared[key]
        if not e or e.expires_at <= ctl.clock.now then return nil end
        return e.value
    end

    -- host.http: records the call and answers from the queue; https only unless
    -- allow_http (operator-configured endpoints), like host/src/l_http.c.
    host.http = {}

    -- host.http.stream: the same queue and recording as request(); the answer's
    -- body comes out of read() in one chunk.
    function host.http.stream(req)
        local res, err = host.http.request(req)
        if not res then return nil, err end
        local done, closed = false, false
        return {
            headers = function() return res.status, res.headers end,
            read = function()
                if closed then return nil, "cancelled" end
                if done or res.body == "" then return nil end
                done = true
                return res.body
            end,
            close = function() closed = true end,
        }
    end

    function host.http.request(req)
        if type(req) ~= "table" then error("bad argument #1 to 'request' (table expected)", 2) end
        if type(req.url) ~= "string" then error("host.http.request: url is required", 2) end
        local call = copy(req)
        call.method = call.method or "GET"
        ctl.http_calls[#ctl.http_calls + 1] = call
        local url = req.url:lower()
        if url:sub(1, 8) ~= "https://" and not (req.allow_http and url:sub(1, 7) == "http://") then
            call.blocked = true
            return nil, "blocked"
        end
        local response = table.remove(ctl.http_queue, 1)
        if response == nil then
            error("fake host: unexpected http request " .. call.method .. " " .. req.url, 2)
        end
        local res, err
        if type(response) == "function" then
            res, err = response(call)
        elseif type(response) == "string" then
            res, err = nil, response
        else
            res = response
        end
        if res == nil then return nil, err or "error" end
        res = copy(res)
        res.status = res.status or 200
        res.headers = res.headers or {}
        res.body = res.body or ""
        if req.max_body and #res.body > req.max_body then return nil, "too large" end
        return res
    end

    host.info = {
        version = opts.version or "0.0.0-spec",
        dev = opts.dev or false,
        workers = opts.workers or 1,
        data_dir = data_dir,
        started_at = ctl.clock.now,
        cwd = root(),
        listen_host = "127.0.0.1",
        listen_port = 8000,
        tls = false,
    }

    -- Engine primitives. Specs exercise the request path; the engine and the
    -- sandbox are covered end to end by tests/e2e. These fakes record what they get.
    ctl.spawned, ctl.vault = {}, {}
    function host.spawn(fn, ...)
        ctl.spawned[#ctl.spawned + 1] = { fn = fn, args = { ... } }
    end
    function host.is_current_generation() return true end
    -- host.vault (host/src/l_core.c): entries expire on the fake clock; get leaves the
    -- entry in place, take removes it.
    host.vault = {}
    local function vault_entry(key)
        if type(key) ~= "string" then error("bad argument #1 (string expected)", 3) end
        local e = ctl.vault[key]
        if e and e.expires_at <= ctl.clock.now then
            ctl.vault[key] = nil
            e = nil
        end
        return e
    end
    function host.vault.put(key, value, ttl)
        if type(key) ~= "string" then error("bad argument #1 to 'put' (string expected)", 2) end
        if type(value) ~= "string" then error("bad argument #2 to 'put' (string expected)", 2) end
        if type(ttl) ~= "number" or ttl <= 0 or ttl > 7 * 86400 then
            error("bad argument #3 to 'put' (ttl out of range)", 2)
        end
        ctl.vault[key] = { value = value, ttl = ttl, expires_at = ctl.clock.now + ttl }
        return true
    end
    function host.vault.get(key)
        local e = vault_entry(key)
        return e and e.value
    end
    function host.vault.take(key)
        local e = vault_entry(key)
        ctl.vault[key] = nil
        return e and e.value
    end
    -- host.secret(name[, prefix]): a handle, never the value. ctl.secrets overrides the
    -- process environment (a string, or false = unset); ctl:secret_value(handle) is what
    -- the C side would send.
    ctl.secrets = {}
    local secret_mt = {
        __name = "secret",
        __tostring = function(s) return "[secret " .. s.name .. "]" end,
        __concat = function() error("secrets cannot be concatenated", 2) end,
    }
    local function secret_env(name)
        local v = ctl.secrets[name]
        if v == false then return nil end
        if v == nil then v = os.getenv(name) end
        if v == "" then return nil end
        return v
    end
    function host.secret(name, prefix)
        if type(name) ~= "string" or name == "" or #name >= 128 then
            error("bad argument #1 to 'secret' (invalid secret name)", 2)
        end
        if not secret_env(name) then return nil, name .. " is not set" end
        return setmetatable({ name = name, prefix = prefix or "" }, secret_mt)
    end
    function ctl.secret_value(_, s)
        if getmetatable(s) ~= secret_mt then return nil end
        return s.prefix .. (secret_env(s.name) or "")
    end
    host.process = {}
    function host.process.spawn() return nil, "host.process is not available in specs" end
    -- The real list comes from the generation's file list (host/lua/prelude.lua).
    function host.list_scripts(folder)
        local names = {}
        local p = io.popen("ls " .. root() .. "/scripts/" .. folder .. " 2>/dev/null")
        for line in p:lines() do
            local base = line:match("^([%w_]+)%.lua$")
            if base and base ~= "init" then names[#names + 1] = folder .. "." .. base end
        end
        p:close()
        table.sort(names)
        return names
    end

    -- The real host allows this only while scripts load; specs may call it any time.
    function host.asset(rel)
        if type(rel) ~= "string" or rel:find("..", 1, true) or rel:sub(1, 1) == "/" then
            error("invalid asset path", 2)
        end
        local src = read_file(root() .. "/scripts/" .. rel)
        if not src then error("asset not found: " .. rel, 2) end
        return src
    end

    return host, ctl
end

-- Makes `require "host"` return `host` (drops any cached one).
function _M.install(host)
    package.preload["host"] = function() return host end
    package.loaded["host"] = nil
    return host
end

return _M
