-- Busted helper (loaded by .busted before any spec; specs also `require "support.helper"`).
-- Sets package.path the way the host resolves modules (lualib/ then scripts/),
-- package.cpath to build/lua/ for host_core.so, configures host.jwt with a test
-- secret, and offers:
--   helper.fresh_host(opts)     new fake host (spec/support/fake_host.lua), installed as
--                               package.preload["host"], with every app/route module unloaded
--   helper.fresh_store(users)   a fresh host, app.store on it, a second connection to its
--                               SQLite file and these users: host, ctl, store, db
--   helper.sandbox(host)        require/finish_loading from the real host/lua/prelude.lua
--   helper.request(t)           a request table as the C host builds it
--   helper.handle(server, req)  app.server.handle's results as a response table
--   helper.with_body(r, body)   r.body / r.json as the pipeline sets them
--   helper.call(fn, r)          a route handler's status and round-tripped JSON body
--   helper.rejects(st, msg, fn, r)  asserts the app error fn(r) raises
--   helper.catch(fn, ...)       the app.errors error raised by fn (fails if none)
--   helper.sign_jwt(claims, o)  an HS256 token signed in Lua (expired, alg:none, ...)
--   helper.configure_jwt(s)     re-configures host_core's jwt (optional Supabase secret)
local lfs = require "lfs"

local _M = {}

local function dirname(p) return (p:gsub("/[^/]*$", "")) end

local source = debug.getinfo(1, "S").source:gsub("^@", "")
if source:sub(1, 1) ~= "/" then source = lfs.currentdir() .. "/" .. source end
local ROOT = dirname(dirname(dirname(source))):gsub("/%./", "/")
if ROOT:sub(-2) == "/." then ROOT = ROOT:sub(1, -3) end
_M.ROOT = ROOT

local lua_paths = {
    ROOT .. "/lualib/?.lua", ROOT .. "/lualib/?/init.lua",
    ROOT .. "/scripts/?.lua", ROOT .. "/scripts/?/init.lua",
    ROOT .. "/spec/?.lua",
}
if not package.path:find(ROOT .. "/lualib/?.lua", 1, true) then
    package.path = table.concat(lua_paths, ";") .. ";" .. package.path
end
if not package.cpath:find(ROOT .. "/build/lua/?.so", 1, true) then
    package.cpath = ROOT .. "/build/lua/?.so;" .. package.cpath
end

local ok, core = pcall(require, "host_core")
if not ok then
    error("cannot load build/lua/host_core.so (run `make all` first): " .. tostring(core), 0)
end
_M.core = core

local fake_host = require "support.fake_host"
fake_host.root = ROOT
_M.fake_host = fake_host

-- 40 bytes: host.jwt refuses secrets under 32.
_M.JWT_SECRET = "spec-secret-0123456789-abcdefghijklmnopq"
_M.SUPABASE_SECRET = "spec-supabase-secret-0123456789-abcdefgh"

function _M.configure_jwt(supabase_secret)
    assert(core.configure_jwt(_M.JWT_SECRET, supabase_secret))
end
_M.configure_jwt()

-- Module names the host loads from lualib/ and scripts/.
local function is_app_module(name)
    return name == "host" or name == "init" or name:match("^app%.") or name:match("^routes%.")
end

function _M.unload_app()
    for name in pairs(package.loaded) do
        if is_app_module(name) then package.loaded[name] = nil end
    end
end

-- A new fake host, installed for `require "host"`; app/route modules are unloaded so
-- the next require binds them to it (they read host.* and config at load time).
function _M.fresh_host(opts)
    local host, ctl = fake_host.new(opts)
    _M.unload_app()
    fake_host.install(host)
    return host, ctl
end

-- A fresh fake host, app.store bound to it, a connection of the spec's own to the
-- store's SQLite file (for rows the store has no call for), and the users
-- {{id, attrs}, ...} created in that order. The caller closes db and cleans up ctl.
function _M.fresh_store(users)
    local host, ctl = _M.fresh_host()
    local store = require "app.store"
    local db = assert(host.sqlite.open(ctl.db_path))
    for _, u in ipairs(users) do assert(store:ensure_user(u[1], u[2] or {})) end
    return host, ctl, store, db
end

-- Loads modules exactly as the host does: through host/lua/prelude.lua (text chunks,
-- sealed globals, restricted stdlib, lualib/ then scripts/). The prelude hardens the
-- process-wide string metatable and string.dump; both are restored for busted.
function _M.sandbox(host)
    local prelude = assert(loadfile(ROOT .. "/host/lua/prelude.lua", "t"))
    local files = {}
    local function walk(dir)
        for entry in lfs.dir(dir) do
            if entry:sub(1, 1) ~= "." then
                local path = dir .. "/" .. entry
                local mode = lfs.attributes(path, "mode")
                if mode == "directory" then
                    walk(path)
                elseif entry:match("%.lua$") then
                    files[#files + 1] = path
                end
            end
        end
    end
    walk(ROOT .. "/lualib")
    walk(ROOT .. "/scripts")
    local string_mt, dump = getmetatable(""), string.dump
    local ok_call, req, finish = pcall(prelude, host, ROOT .. "/lualib", ROOT .. "/scripts",
        fake_host.read_file, files)
    string_mt.__metatable = nil
    rawset(string, "dump", dump)
    if not ok_call then error(req, 0) end
    return req, finish
end

-- A request as host/src/server.c hands it to Lua (plus what the pipeline adds:
-- params, json, user_id).
function _M.request(t)
    t = t or {}
    local req = {
        method = t.method or "GET",
        path = t.path or "/",
        headers = t.headers or {},
        remote_addr = t.remote_addr or "127.0.0.1",
        request_id = t.request_id or "spec-request-id",
        scheme = "http",
        version = "HTTP/1.1",
        params = t.params or {},
    }
    for k, v in pairs(t) do
        if req[k] == nil then req[k] = v end
    end
    return req
end

-- app.server.handle(req)'s results (status, body, headers, user_id, stream) as one
-- table, the shape the specs read.
function _M.handle(server, req)
    local status, body, headers, user_id, stream = server.handle(req)
    return { status = status, body = body, headers = headers, user_id = user_id, stream = stream }
end

-- Gives request r a body the way the pipeline would: `body` (a string, or a table
-- encoded by host.json) as r.body and its decoded value as r.json. Returns r.
function _M.with_body(r, body)
    if body ~= nil then
        local json = require("host").json
        r.body = type(body) == "string" and body or assert(json.encode(body))
        r.json = json.decode(r.body)
    end
    return r
end

-- Runs a route handler; returns its status, the body as a client would decode it, and
-- the JSON text.
function _M.call(fn, r)
    local json = require("host").json
    local status, body = fn(r)
    local text = assert(json.encode(body))
    return status, json.decode(text), text
end

-- Asserts that fn(r) raises the app error `status` (and `message`, when given);
-- returns the error.
function _M.rejects(status, message, fn, r)
    local luassert = require "luassert" -- busted's assert, which only specs see as a global
    local err = _M.catch(fn, r)
    luassert.are.equal(status, err.status)
    if message then luassert.are.equal(message, err.message) end
    return err
end

-- Runs fn and returns the app.errors error it raised. Anything else (no error, or
-- a non-app error) fails the calling spec with the details.
function _M.catch(fn, ...)
    local errors = require "app.errors"
    local succeeded, err = pcall(fn, ...)
    if succeeded then error("expected an app error, but the call succeeded", 2) end
    if not errors.is_error(err) then
        error("expected an app error, got: " .. tostring(err), 2)
    end
    return err
end

-- ---- HS256 in Lua (SHA-256, HMAC, base64url), to forge test tokens ----------------

local K = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}

local M32 = 0xffffffff

local function ror(x, n)
    return ((x >> n) | (x << (32 - n))) & M32
end

function _M.sha256(msg)
    local H = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 }
    local len = #msg
    msg = msg .. "\128" .. string.rep("\0", (55 - len) % 64) .. string.pack(">I8", len * 8)
    local w = {}
    for chunk = 1, #msg, 64 do
        for i = 1, 16 do w[i] = string.unpack(">I4", msg, chunk + (i - 1) * 4) end
        for i = 17, 64 do
            local x, y = w[i - 15], w[i - 2]
            local s0 = ror(x, 7) ~ ror(x, 18) ~ (x >> 3)
            local s1 = ror(y, 17) ~ ror(y, 19) ~ (y >> 10)
            w[i] = (w[i - 16] + s0 + w[i - 7] + s1) & M32
        end
        local a, b, c, d, e, f, g, h = table.unpack(H)
        for i = 1, 64 do
            local S1 = ror(e, 6) ~ ror(e, 11) ~ ror(e, 25)
            local ch = (e & f) ~ (~e & g)
            local t1 = (h + S1 + ch + K[i] + w[i]) & M32
            local S0 = ror(a, 2) ~ ror(a, 13) ~ ror(a, 22)
            local maj = (a & b) ~ (a & c) ~ (b & c)
            local t2 = (S0 + maj) & M32
            h, g, f, e, d, c, b, a = g, f, e, (d + t1) & M32, c, b, a, (t1 + t2) & M32
        end
        H[1], H[2], H[3], H[4] = (H[1] + a) & M32, (H[2] + b) & M32, (H[3] + c) & M32, (H[4] + d) & M32
        H[5], H[6], H[7], H[8] = (H[5] + e) & M32, (H[6] + f) & M32, (H[7] + g) & M32, (H[8] + h) & M32
    end
    return string.pack(">I4I4I4I4I4I4I4I4", table.unpack(H))
end

function _M.hmac_sha256(key, msg)
    if #key > 64 then key = _M.sha256(key) end
    key = key .. string.rep("\0", 64 - #key)
    local ipad = key:gsub(".", function(c) return string.char(c:byte() ~ 0x36) end)
    local opad = key:gsub(".", function(c) return string.char(c:byte() ~ 0x5c) end)
    return _M.sha256(opad .. _M.sha256(ipad .. msg))
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

function _M.b64url(s)
    local out = {}
    for i = 1, #s, 3 do
        local a, b, c = s:byte(i, i + 2)
        local n = (a << 16) | ((b or 0) << 8) | (c or 0)
        local chars = 4
        if not b then chars = 2 elseif not c then chars = 3 end
        for j = 1, chars do
            local idx = (n >> (18 - 6 * (j - 1))) & 63
            out[#out + 1] = B64:sub(idx + 1, idx + 1)
        end
    end
    return table.concat(out)
end

-- Signs `claims` (a table, encoded with host.json) as a compact JWS. Options:
--   secret (default the server secret), header (default {alg="HS256", typ="JWT"}),
--   signature (a literal signature segment, e.g. "" for alg:none tokens).
function _M.sign_jwt(claims, o)
    o = o or {}
    local json = core.json
    local header = assert(json.encode(o.header or { alg = "HS256", typ = "JWT" }))
    local payload = type(claims) == "string" and claims or assert(json.encode(claims))
    local input = _M.b64url(header) .. "." .. _M.b64url(payload)
    local sig = o.signature or _M.b64url(_M.hmac_sha256(o.secret or _M.JWT_SECRET, input))
    return input .. "." .. sig
end

-- Claims like the host's own tokens, `exp_in` seconds from now (negative: expired).
function _M.claims(user_id, token_type, exp_in)
    local now = os.time()
    return { user_id = user_id, type = token_type or "access", iat = now, exp = now + (exp_in or 3600) }
end

-- Removes the temporary data directories when the Lua state closes.
_M._cleanup = setmetatable({}, { __gc = function() fake_host.cleanup_all() end })

package.loaded["support.helper"] = _M
package.loaded["spec.support.helper"] = _M
return _M
