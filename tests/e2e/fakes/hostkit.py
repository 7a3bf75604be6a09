"""Helpers for the host-level e2e tests (tests/e2e/test_host_*.py).

make_tree(tmp) copies scripts/ and lualib/ into a temporary directory and adds
test-only routes (declared in the copy's init.lua, handled by routes/testing.lua),
so the real tree is never touched and hot-reload tests can edit their copy freely.
The copy also isolates a dev-mode watcher from concurrent edits of the real tree.

Test routes (all rate = "none"):
    GET  /test/sleep?s=0.3     host.sleep(s), then {"slept": s}
    GET  /test/spin            while true do end
    GET  /test/spin_pcall      spins inside pcall in a loop (tries to outlive the deadline)
    GET  /test/vm              {"vm": id} unique to the Lua VM (worker) that served it
    POST /test/echo            the request object's fields as JSON (body not parsed)
    GET  /test/upstream        host.http GET of the x-upstream-url header; the
                               upstream's body verbatim (502 {"err"} on failure)
    POST /test/http            body = host.http.request spec (+ "protect": false to
                               call without pcall); {"ok","res","err"} where res has
                               status/headers/body
    GET  /test/sandbox         tries each sandbox escape under pcall; one entry per
                               attempt: {"ok": escaped?, "err": message}
    GET  /test/version         {"version": V} from routes/reload_target.lua
    GET  /test/version_slow    host.sleep(1) then {"version": V} (same file)
"""
import asyncio
import os
import shutil
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))

TEST_ROUTES = """
        { method = "GET", path = "/test/sleep", handler = "routes.testing.sleep", rate = "none" },
        { method = "GET", path = "/test/spin", handler = "routes.testing.spin", rate = "none" },
        { method = "GET", path = "/test/spin_pcall", handler = "routes.testing.spin_pcall", rate = "none" },
        { method = "GET", path = "/test/vm", handler = "routes.testing.vm", rate = "none" },
        { method = "POST", path = "/test/echo", handler = "routes.testing.echo", rate = "none", body = false },
        { method = "GET", path = "/test/upstream", handler = "routes.testing.upstream", rate = "none" },
        { method = "POST", path = "/test/http", handler = "routes.testing.http", rate = "none" },
        { method = "GET", path = "/test/sandbox", handler = "routes.testing.sandbox", rate = "none" },
        { method = "GET", path = "/test/version", handler = "routes.reload_target.version", rate = "none" },
        { method = "GET", path = "/test/version_slow", handler = "routes.reload_target.version_slow",
            rate = "none" },
"""

TESTING_LUA = r'''
local host = require "host"

local _M = {}

function _M.sleep(req)
    local s = tonumber((req.query or ""):match("s=([%d%.]+)")) or 0.1
    host.sleep(s)
    return 200, { slept = s }
end

function _M.spin()
    local n = 0
    while true do n = n + 1 end
end

-- CPU-bound and catching whatever error the deadline raises, to keep spinning.
function _M.spin_pcall()
    while true do
        pcall(function() while true do end end)
    end
end

-- The request object as the handler sees it (body = false: not parsed as JSON).
function _M.echo(req)
    return 200, { method = req.method, path = req.path, query = req.query, headers = req.headers,
        body = req.body, remote_addr = req.remote_addr, request_id = req.request_id,
        scheme = req.scheme, version = req.version }
end

-- One id per VM (module state is per generation, per worker).
local VM_ID = host.uuid()
function _M.vm()
    return 200, { vm = VM_ID }
end

function _M.upstream(req)
    local res, err = host.http.request { url = req.headers["x-upstream-url"], allow_http = true,
        timeout_ms = 5000 }
    if not res then return 502, { err = err } end
    return { status = 200, headers = { ["content-type"] = "text/plain" }, body = res.body }
end

function _M.http(req)
    local spec = {}
    for k, v in pairs(req.json) do
        if k ~= "protect" then spec[k] = v end
    end
    if req.json.protect == false then
        local res, err = host.http.request(spec)
        return 200, { ok = res ~= nil, res = res, err = err }
    end
    local ok, res, err = pcall(host.http.request, spec)
    if not ok then return 200, { ok = false, raised = tostring(res) } end
    return 200, { ok = res ~= nil, res = res, err = err }
end

-- Each attempt returns normally only if the escape worked.
local attempts = {
    os_execute = function() return os.execute("true") end,
    os_getenv = function() return os.getenv("PATH") end,
    os_exit = function() if os.exit == nil then error("no os.exit") end return true end,
    io_open = function() return io.open("/etc/passwd") end,
    debug_getinfo = function() return debug.getinfo(1) end,
    package_loadlib = function() return package.loadlib("libc.so.6", "system") end,
    string_dump = function() return string.dump(function() end) end,
    string_dump_method = function() return ("").dump(function() end) end,
    load_dump = function() return load(string.dump(function() return 1 end))() end,
    load_binary = function() return load("\27Lua\84\0", "x", "b") end,
    loadstring = function() return loadstring("return 1")() end,
    dofile = function() return dofile("/etc/passwd") end,
    assign_global = function() sandbox_leak = 1; return true end,
    rawset_global = function()
        rawset(_ENV, "sandbox_leak2", 1)
        if sandbox_leak2 ~= 1 then error("no effect") end
        return true
    end,
    read_undefined_global = function() return undefined_global_xyz end,
    string_metatable = function() return getmetatable("").__index end,
    string_metatable_set = function() return setmetatable(string, {}) end,
    modify_string_format = function() string.format = function() return "pwned" end; return true end,
    rawset_string_format = function()
        rawset(string, "format", function() return "pwned" end)
        if string.format("%d", 1) ~= "pwned" then error("no effect") end
        return true
    end,
    modify_host = function() host.sleep = function() end; return true end,
    modify_host_http = function() host.http.request = function() end; return true end,
    rawset_host_http = function()
        rawset(host.http, "request", function() return "pwned" end)
        if host.http.request({}) ~= "pwned" then error("no effect") end
        return true
    end,
    require_os = function() return require "os" end,
    require_io = function() return require "io" end,
    require_debug = function() return require "debug" end,
    require_path = function() return require "../../etc/passwd" end,
    host_env_secret = function() return host.env("JWT_SECRET") end,
    host_asset_runtime = function() return host.asset("init.lua") end,
}

function _M.sandbox()
    local report = {}
    for name, fn in pairs(attempts) do
        local ok, err = pcall(fn)
        report[name] = { ok = ok, err = ok and "" or tostring(err) }
    end
    -- Whatever happened above, the shared stdlib must be intact afterwards.
    report.string_format_intact = { ok = string.format("%d", 7) ~= "7", err = "" }
    return 200, report
end

return _M
'''

RELOAD_TARGET = '''
local host = require "host"
local _M = {}
local VERSION = "%s"
function _M.version() return 200, { version = VERSION } end
function _M.version_slow() host.sleep(1); return 200, { version = VERSION } end
return _M
'''


def make_tree(tmp, version="v1"):
    """Copies scripts/ and lualib/ under tmp, adds the test routes. Returns (scripts, lualib)."""
    scripts = os.path.join(tmp, "scripts")
    lualib = os.path.join(tmp, "lualib")
    shutil.copytree(os.path.join(ROOT, "scripts"), scripts)
    shutil.copytree(os.path.join(ROOT, "lualib"), lualib)
    init = os.path.join(scripts, "init.lua")
    with open(init) as f:
        text = f.read()
    marker = "routes = {\n"
    assert marker in text, "scripts/init.lua no longer has a 'routes = {' table"
    text = text.replace(marker, marker + TEST_ROUTES, 1)
    with open(init, "w") as f:
        f.write(text)
    with open(os.path.join(scripts, "routes", "testing.lua"), "w") as f:
        f.write(TESTING_LUA)
    write_reload_target(scripts, version)
    return scripts, lualib


def write_reload_target(scripts, version, broken=False, inplace=False):
    """(Re)writes routes/reload_target.lua: atomically (write + rename, like most
    editors) or in place (truncate + write, like vim with backupcopy=yes)."""
    path = os.path.join(scripts, "routes", "reload_target.lua")
    text = RELOAD_TARGET % version
    if broken:
        text = text.replace("return _M\n", "local = oops syntax error\nreturn _M\n")
    if inplace:
        with open(path, "w") as f:
            f.write(text)
        return path
    tmp = path + ".tmp~"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)
    return path


def wait_for(cond, timeout=5.0, interval=0.02):
    """Polls cond() until truthy; returns its value or None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)


# -- raw concurrent HTTP/1.1 client ------------------------------------------

def _parse(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = b""
        while True:
            size_line, _, rest = body.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out += rest[:size]
            body = rest[size + 2:]
        body = out
    return status, headers, body.decode("utf-8", errors="replace")


async def _one(port, path, headers, timeout):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        req = "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" % path
        for k, v in (headers or {}).items():
            req += "%s: %s\r\n" % (k, v)
        writer.write((req + "\r\n").encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(-1), timeout)
        return _parse(raw)
    except Exception as e:  # reported as a failed request, never raised
        return (0, {}, repr(e))
    finally:
        writer.close()


def concurrent_get(port, path, n, headers=None, timeout=10.0):
    """n simultaneous GETs on n connections. Returns (results, elapsed_seconds)."""
    async def main():
        t0 = time.monotonic()
        res = await asyncio.gather(*[_one(port, path, headers, timeout) for _ in range(n)])
        return res, time.monotonic() - t0
    return asyncio.run(main())


def error_lines(srv):
    """Log lines at level error (parsed JSON; unparsable lines count as errors too)."""
    return [l for l in srv.log_lines() if l.get("level") == "error" or "unparsed" in l]


def tree_server(env=None, workers=1, version="v1", start=True):
    """A harness Server running on a private copy of scripts/ + lualib/ with the test
    routes. The copy lives in the server's temp dir (removed by close()); its scripts
    directory is srv.scripts_dir."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
    from harness import Server
    srv = Server(env=env, workers=workers, start=False)
    scripts, lualib = make_tree(srv.tmp, version)
    srv.env["AICODE_SCRIPTS_DIR"] = scripts
    srv.env["AICODE_LUALIB_DIR"] = lualib
    srv.scripts_dir = scripts
    if start:
        try:
            srv.start()
        except Exception:
            srv.close()
            raise
    return srv
