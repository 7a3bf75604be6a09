-- Supabase store: the same methods, semantics and return conventions as
-- app.store.sqlite, over PostgREST at SUPABASE_URL/rest/v1 (host.http, which
-- yields: the store is used from requests, the engine's coroutines and the CLI).
--
-- Requests carry the service-role key (apikey + Authorization: Bearer) as
-- host.secret handles, so the key never becomes a Lua string. That key bypasses
-- row-level security: every method a route calls filters on user_id=eq.<caller>
-- itself, exactly as the SQLite store's WHERE clauses do.
--
-- Failures: an unreachable database (transport error, 502/503/504) is
-- nil, "unavailable" (the detail goes to the log); a unique violation (23505) is
-- nil, "conflict"; any other PostgREST error is nil, "<status> <code>: <message>",
-- for the log only (routes answer 503 through app.errors.store_unavailable).
-- Idempotent requests (GET, and the guarded heartbeat / finish RPCs) are retried
-- with a short backoff.
--
-- Shapes are normalised to the SQLite store's: timestamps are ISO 8601 UTC strings
-- with milliseconds ("2026-01-01T00:00:00.123Z"), JSON columns marked tables
-- ([] stays []), ids integers, NULL json.null.
local host = require "host"
local config = require "app.config"
local text = require "app.text"

local json = host.json
local null = json.null

local _M = {}

-- The newest db/supabase migration this code needs (public.schema_migrations.version).
local SCHEMA_VERSION = "005"
local SCHEMA_MISMATCH = "schema mismatch: run aicode migrate with DATABASE_URL (the database lacks migration "
    .. SCHEMA_VERSION .. " of db/supabase)"
_M.SCHEMA_VERSION = SCHEMA_VERSION

local BASE = (config.get().supabase_url or "") .. "/rest/v1"
local APIKEY, key_err = host.secret("SUPABASE_SERVICE_ROLE_KEY")
local BEARER = APIKEY and host.secret("SUPABASE_SERVICE_ROLE_KEY", "Bearer ")

local TIMEOUT_MS = 10000
local MAX_BODY = 64 * 1024 * 1024
local RETRY_STATUS = { [502] = true, [503] = true, [504] = true }
local BACKOFF_S = { 0.05, 0.2, 0.5 }

-- ---------------------------------------------------------------------------
-- Encoding
-- ---------------------------------------------------------------------------

local function urlencode(s)
    return (tostring(s):gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- A PostgREST equality filter value. The PostgREST grammar unquotes a value wrapped
-- in double quotes, so such a value goes through a quoted in-list instead.
local function eq(v)
    if math.type(v) == "integer" then return "eq." .. v end
    v = tostring(v)
    if v:sub(1, 1) == '"' then
        return "in." .. urlencode('("' .. v:gsub('[\\"]', "\\%0") .. '")')
    end
    return "eq." .. urlencode(v)
end
_M.eq = eq

-- PostgreSQL text holds neither NUL nor invalid UTF-8; SQLite did. Strings are made
-- valid UTF-8 (U+FFFD for bad bytes) only when the encoder refuses them, and the
-- JSON escape \u0000 becomes \ufffd (jsonb and text reject it).
local function sanitize(v, depth)
    if type(v) == "string" then return text.valid_utf8(v) end
    if type(v) ~= "table" or v == null or depth > 64 then return v end
    for k, x in pairs(v) do rawset(v, k, sanitize(x, depth + 1)) end
    return v
end

local function encode(v)
    local body = json.encode(v)
    if not body then
        local err
        body, err = json.encode(sanitize(v, 0))
        if not body then return nil, "cannot encode the request: " .. tostring(err) end
    end
    if body:find("u0000", 1, true) then
        body = body:gsub("(\\+)u0000", function(bs)
            if #bs % 2 == 1 then return bs:sub(1, -2) .. "\\ufffd" end
        end)
    end
    return body
end

-- ---------------------------------------------------------------------------
-- Normalisation
-- ---------------------------------------------------------------------------

local function days_from_civil(y, m, d)
    y = m <= 2 and y - 1 or y
    local era = (y >= 0 and y or y - 399) // 400
    local yoe = y - era * 400
    local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
    local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468
end

-- PostgREST's timestamptz ("2026-01-01T10:00:00.123456+00:00") -> epoch seconds
-- (float), or nil when it is not one.
local function epoch_of(v)
    if type(v) ~= "string" then return nil end
    local y, mo, d, h, mi, s, frac, tz = v:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[T ](%d%d):(%d%d):(%d%d)(%.?%d*)(.*)$")
    if not y then return nil end
    local off = 0
    if tz ~= "" and tz ~= "Z" then
        local sign, oh, om = tz:match("^([%+%-])(%d%d):?(%d?%d?)$")
        if not sign then return nil end
        off = (tonumber(oh) * 60 + (tonumber(om) or 0)) * 60
        if sign == "-" then off = -off end
    end
    local secs = days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400
        + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(s) - off
    return secs + (frac ~= "" and frac ~= "." and tonumber("0" .. frac) or 0)
end
_M.epoch_of = epoch_of

-- The SQLite store's format: "YYYY-MM-DDTHH:MM:SS.mmmZ" (UTC, milliseconds, truncated).
local function iso(v)
    if type(v) ~= "string" then return v end
    local date, clock, frac, tz = v:match("^(%d%d%d%d%-%d%d%-%d%d)[T ](%d%d:%d%d:%d%d)(%.?%d*)(.*)$")
    if not date then return v end
    local ms = ((frac:sub(2)) .. "000"):sub(1, 3)
    if tz == "Z" or tz == "" or tz:match("^%+00:?0?0?$") or tz:match("^%-00:?0?0?$") then
        return date .. "T" .. clock .. "." .. ms .. "Z"
    end
    local secs = epoch_of(v)
    if not secs then return v end
    return os.date("!%Y-%m-%dT%H:%M:%S", math.floor(secs)) .. "." .. ms .. "Z"
end
_M.iso = iso

local function iso_fields(row, fields)
    for i = 1, #fields do
        local f = fields[i]
        local v = row[f]
        if type(v) == "string" then row[f] = iso(v) end
    end
end

-- A NULL JSON column reads as its default, like the SQLite store's.
local function json_default(row, field, make)
    local v = row[field]
    if v == nil or v == null then row[field] = make() end
end

local ROW_TIMES = { "created_at", "updated_at", "started_at", "completed_at", "expires_at" }

local function project_row(row)
    json_default(row, "settings", json.object)
    iso_fields(row, ROW_TIMES)
    return row
end

local function task_row(row)
    json_default(row, "changed_files", json.array)
    json_default(row, "chat_messages", json.array)
    json_default(row, "execution_metadata", json.object)
    iso_fields(row, ROW_TIMES)
    return row
end

local function user_row(row)
    json_default(row, "preferences", json.object)
    if type(row.is_test_user) == "boolean" then row.is_test_user = row.is_test_user and 1 or 0 end
    iso_fields(row, ROW_TIMES)
    return row
end

-- ---------------------------------------------------------------------------
-- The client
-- ---------------------------------------------------------------------------

-- An unreachable database is logged at most every 10 s per VM (callers see only
-- "unavailable"; a long outage must not flood the log).
local last_unreachable_log = -math.huge
local function unreachable(detail)
    local now = host.monotonic_ms()
    if now - last_unreachable_log >= 10000 then
        last_unreachable_log = now
        host.log("warn", "supabase store: database unreachable", { error = detail })
    end
    return nil, "unavailable"
end

-- PostgREST's error body {code, message, details, hint} -> our error string.
local function failure(res)
    local e = json.decode(res.body or "")
    if type(e) ~= "table" then e = {} end
    local code = type(e.code) == "string" and e.code or nil
    if code == "23505" then return nil, "conflict" end
    if code == "PGRST000" or code == "PGRST001" or code == "PGRST002" or code == "PGRST003" then
        return unreachable("postgrest " .. res.status .. " " .. code)
    end
    local parts = { "postgrest " .. res.status .. " " .. (code or "-") .. ": " ..
        tostring(type(e.message) == "string" and e.message or "error") }
    if type(e.details) == "string" then parts[#parts + 1] = "details: " .. e.details end
    if type(e.hint) == "string" then parts[#parts + 1] = "hint: " .. e.hint end
    return nil, table.concat(parts, "; "), code, res.status
end

-- request(method, path, opts) -> decoded body (json.null for an empty one), headers
--                              | nil, err[, code, status]
-- opts: query (string), body (Lua value), prefer, accept, attempts, timeout_ms
local function request(method, path, opts)
    opts = opts or {}
    if not APIKEY then return nil, key_err end
    local body, eerr
    local headers = { apikey = APIKEY, authorization = BEARER, accept = opts.accept or "application/json" }
    if opts.body ~= nil then
        body, eerr = encode(opts.body)
        if not body then return nil, eerr end
        headers["content-type"] = "application/json"
    end
    if opts.prefer then headers.prefer = opts.prefer end
    local url = BASE .. path .. (opts.query and opts.query ~= "" and ("?" .. opts.query) or "")
    local attempts = opts.attempts or (method == "GET" and 3 or 1)
    local res, err
    for attempt = 1, attempts do
        res, err = host.http.request {
            method = method, url = url, headers = headers, body = body,
            timeout_ms = opts.timeout_ms or TIMEOUT_MS, max_body = MAX_BODY,
            allow_http = true, -- operator-configured endpoint (config limits http to loopback)
        }
        if res and not RETRY_STATUS[res.status] then break end
        if err == "blocked" or err == "too large" then break end
        if attempt < attempts then host.sleep(BACKOFF_S[attempt] or 0.5) end
    end
    if not res then
        if err == "too large" then return nil, "postgrest response larger than " .. MAX_BODY .. " bytes" end
        return unreachable(tostring(err))
    end
    if res.status < 200 or res.status > 299 then
        if RETRY_STATUS[res.status] then return unreachable("postgrest status " .. res.status) end
        return failure(res)
    end
    if res.body == nil or res.body == "" then return null, res.headers end
    local decoded, derr = json.decode(res.body)
    if decoded == nil then return nil, "postgrest answered invalid JSON: " .. tostring(derr) end
    return decoded, res.headers
end

-- -> rows (a JSON array) | nil, err
local function get_rows(path, query, opts)
    opts = opts or {}
    local rows, err, code, status = request("GET", path, { query = query, attempts = opts.attempts,
        timeout_ms = opts.timeout_ms })
    if rows == nil then return nil, err, code, status end
    if type(rows) ~= "table" then return nil, "postgrest answered a non-array" end
    return rows
end

-- -> the first row | nil (none) | nil, err
local function first(path, query)
    local rows, err = get_rows(path, query)
    if not rows then return nil, err end
    return rows[1]
end

-- A write with Prefer: return=representation -> rows | nil, err
local function write(method, path, query, body, prefer)
    local p = "return=representation"
    if prefer then p = p .. "," .. prefer end
    local rows, err, code = request(method, path, { query = query, body = body, prefer = p })
    if rows == nil then return nil, err, code end
    if type(rows) ~= "table" then return nil, "postgrest answered a non-array" end
    return rows
end

local function rpc(name, args, opts)
    opts = opts or {}
    return request("POST", "/rpc/" .. name, { body = args or json.object(), query = opts.query,
        attempts = opts.attempts })
end

-- Rate limits shared by every host (db/supabase/004_rate_limits.sql, 005: bounded
-- clean-up): one call, one upsert, no retry (app.ratelimit falls back on a failure).
-- -> allowed, retry_after | nil, err
function _M.rate_limit_hit(_, key, window_s, max_hits)
    local res, err = rpc("rate_limit_hit", { key = key, window_seconds = window_s, max_hits = max_hits },
        { attempts = 1 })
    if res == nil then return nil, err end
    local row = type(res) == "table" and (res[1] or res) or nil
    -- Anything but a boolean is no answer (not a refusal: the caller falls back).
    if type(row) ~= "table" or type(row.allowed) ~= "boolean" then return nil, "rate limit: unexpected answer" end
    return row.allowed, math.tointeger(row.retry_after) or 1
end

-- ---------------------------------------------------------------------------
-- Health and schema
-- ---------------------------------------------------------------------------

-- -> true | nil, "unavailable" | nil, SCHEMA_MISMATCH, public message | nil, err
local function schema_check(attempts, timeout_ms)
    local rows, err, code, status = get_rows("/schema_migrations",
        "select=version&version=eq." .. SCHEMA_VERSION, { attempts = attempts, timeout_ms = timeout_ms })
    if rows then
        if #rows == 0 then return nil, SCHEMA_MISMATCH, SCHEMA_MISMATCH end
        return true
    end
    -- No such table: a database that was never migrated (42P01 from PostgreSQL,
    -- PGRST205 from PostgREST's schema cache); or, on a plain PostgreSQL, not even the
    -- API roles that 000_supabase_shim.sql makes (22023: role "service_role" does not exist).
    if (status == 404 and (code == "42P01" or code == "PGRST205" or code == "PGRST200"))
        or (code == "22023" and err:find('role "[%w_]+" does not exist')) then
        return nil, SCHEMA_MISMATCH, SCHEMA_MISMATCH
    end
    return nil, err
end

-- A cheap query that also proves the schema is the one this code needs. The third
-- value, when present, is safe to show a client (/health).
function _M.ping()
    return schema_check(2, 3000)
end

-- At start (check-config, and serve before it listens): a database without the
-- expected migrations is a configuration problem. An unreachable one is not.
config.add_check(function()
    if config.get().store ~= "supabase" then return nil end
    local ok, err = schema_check(1, 5000)
    if not ok and err == SCHEMA_MISMATCH then return SCHEMA_MISMATCH end
    return nil
end)

-- ---------------------------------------------------------------------------
-- Users
-- ---------------------------------------------------------------------------

local USER_COLUMNS = "id,email,full_name,avatar_url,github_username,preferences,is_test_user,expires_at," ..
    "created_at,updated_at"
local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

local function is_uuid(v)
    return type(v) == "string" and v:match(UUID) ~= nil
end

function _M.get_user(_, id)
    -- users.id is a uuid: anything else names no user (PostgreSQL would refuse the filter).
    if not is_uuid(id) then return nil end
    local row, err = first("/users", "select=" .. USER_COLUMNS .. "&id=" .. eq(id))
    if not row then return nil, err end
    return user_row(row)
end

-- public.users references auth.users (Supabase Auth's sign-up creates both, through
-- the on_auth_user_created trigger): a user unknown to Supabase Auth cannot be added.
function _M.ensure_user(self, id, attrs)
    if not is_uuid(id) then return nil, "user id is not a UUID" end
    local rows, err, code = write("POST", "/users", "on_conflict=id&select=" .. USER_COLUMNS,
        { id = id, email = attrs and attrs.email or null }, "resolution=ignore-duplicates")
    if not rows then
        if code == "23503" then
            return nil, "no Supabase Auth user " .. id .. " (users are created by signing up with Supabase Auth)"
        end
        return nil, err
    end
    if rows[1] then return user_row(rows[1]), true end
    local row, gerr = self:get_user(id)
    if not row then return nil, gerr or "user vanished" end
    return row, false
end

-- ---------------------------------------------------------------------------
-- Projects
-- ---------------------------------------------------------------------------

local PROJECT_BASE = "id,user_id,repo_url,repo_name,repo_owner,name,description,is_active,settings," ..
    "created_at,updated_at"
local PROJECT_COLUMNS = PROJECT_BASE .. ",task_count,completed_tasks,active_tasks"

function _M.list_projects(_, user_id)
    local rows, err = get_rows("/projects_with_counts", "select=" .. PROJECT_COLUMNS .. "&user_id=" .. eq(user_id) ..
        "&order=created_at.desc,id.desc")
    if not rows then return nil, err end
    for i = 1, #rows do project_row(rows[i]) end
    return json.array(rows)
end

function _M.get_project(_, user_id, id)
    if math.type(id) ~= "integer" then return nil end
    local row, err = first("/projects_with_counts", "select=" .. PROJECT_COLUMNS .. "&id=" .. eq(id) ..
        "&user_id=" .. eq(user_id))
    if not row then return nil, err end
    return project_row(row)
end

function _M.create_project(_, user_id, f)
    local rows, err = write("POST", "/projects", "select=" .. PROJECT_BASE, {
        user_id = user_id, repo_url = f.repo_url, repo_name = f.repo_name, repo_owner = f.repo_owner,
        name = f.name, description = f.description or "", is_active = f.is_active ~= false,
        settings = f.settings or json.object(),
    })
    if not rows then return nil, err end
    local row = rows[1]
    if not row then return nil, "project insert returned nothing" end
    -- A new project has no tasks yet.
    row.task_count, row.completed_tasks, row.active_tasks = 0, 0, 0
    return project_row(row)
end

local UPDATABLE = { "name", "description", "repo_url", "repo_name", "repo_owner", "settings", "is_active" }

function _M.update_project(self, user_id, id, f)
    if math.type(id) ~= "integer" then return nil end
    local body = json.object()
    for _, col in ipairs(UPDATABLE) do
        if f[col] ~= nil then body[col] = f[col] end
    end
    -- As the SQLite store: every update stamps updated_at (the trigger does it when the
    -- statement leaves it unchanged).
    body.updated_at = "now"
    local rows, err = write("PATCH", "/projects", "select=id&id=" .. eq(id) .. "&user_id=" .. eq(user_id), body)
    if not rows then return nil, err end
    if #rows == 0 then return nil end
    return self:get_project(user_id, id)
end

function _M.delete_project(_, user_id, id)
    if math.type(id) ~= "integer" then return false end
    local rows, err = write("DELETE", "/projects", "select=id&id=" .. eq(id) .. "&user_id=" .. eq(user_id))
    if not rows then return nil, err end
    return #rows > 0
end

-- The task row as the API shows it (the SQLite store's TASK_COLUMNS).
local TASK_COLUMNS = "id,user_id,project_id,status,agent,repo_url,target_branch,pr_branch,container_id," ..
    "commit_hash,pr_number,pr_url,git_diff,git_patch,changed_files,error,chat_messages,execution_metadata," ..
    "created_at,updated_at,started_at,completed_at"
_M.TASK_COLUMNS = TASK_COLUMNS

function _M.list_project_tasks(_, user_id, project_id)
    local rows, err = get_rows("/tasks", "select=" .. TASK_COLUMNS .. "&project_id=" .. eq(project_id) ..
        "&user_id=" .. eq(user_id) .. "&order=created_at.desc,id.desc")
    if not rows then return nil, err end
    for i = 1, #rows do task_row(rows[i]) end
    return json.array(rows)
end

-- Tasks, the queue and task events live in their own module; they share this client
-- and these row helpers.
require("app.store.supabase_tasks").install(_M, {
    request = request, get_rows = get_rows, first = first, write = write, rpc = rpc, eq = eq, iso = iso,
    epoch_of = epoch_of, task_row = task_row, columns = TASK_COLUMNS, is_uuid = is_uuid,
})

return _M
