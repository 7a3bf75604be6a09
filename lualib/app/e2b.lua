-- E2B client over host.http (wire protocol: ../shared/reference/e2b-and-peers.md
-- Part 1). Control plane: REST at E2B_API_URL with X-API-Key. Data plane: envd on
-- port 49983, Connect RPC with the JSON codec; server streams are 5-byte-framed
-- messages (flags, big-endian length) ending with an EndStream frame (flags 0x02).
local host = require "host"
local config = require "app.config"

local json = host.json

local _M = {}

local ENVD_PORT = "49983"
local MAX_RETRIES = 4

-- Readable errors for the task (never the key or a token).
local function control_error(status, body)
    local msg = type(body) == "table" and type(body.message) == "string" and body.message:sub(1, 300) or ""
    if status == 401 or status == 403 then return "E2B rejected the API key (E2B_API_KEY)" end
    if status == 429 then return "E2B sandbox limit reached: " .. msg end
    if status == 404 then return "E2B: not found: " .. msg end
    if status == 400 and msg:lower():find("template") then return "E2B template not found: " .. msg end
    return "E2B API error " .. tostring(status) .. ": " .. msg
end

local function api(method, path, body, opts)
    local s = config.get()
    opts = opts or {}
    local attempt, delay = 0, 1
    while true do
        attempt = attempt + 1
        local res, err = host.http.request {
            method = method,
            url = s.e2b_api_url .. path,
            headers = {
                ["X-API-Key"] = host.secret("E2B_API_KEY"),
                ["Content-Type"] = body and "application/json" or nil,
            },
            body = body and json.encode(body) or nil,
            timeout_ms = opts.timeout_ms or 60000,
            allow_http = s.e2b_api_url:match("^http://") ~= nil, -- operator-configured (tests)
        }
        local retry_after
        if not res then
            if attempt >= MAX_RETRIES or not opts.retry then return nil, "E2B API unreachable (" .. err .. ")" end
        elseif res.status == 429 or (res.status >= 500 and opts.retry) then
            if attempt >= MAX_RETRIES then
                return nil, control_error(res.status, json.decode(res.body)), res.status
            end
            retry_after = tonumber(res.headers["retry-after"] or "")
        else
            local decoded = res.body ~= "" and json.decode(res.body) or nil
            return res.status, decoded, res.headers
        end
        -- Back off: E2B's Retry-After when given, else 1, 2, 4 s.
        host.sleep(math.min(retry_after or delay, 30))
        delay = delay * 2
    end
end

-- -> {id, envd_url, token, domain} | nil, err
function _M.create(template, timeout_s, metadata, env_vars)
    local status, body, code = api("POST", "/sandboxes", {
        templateID = template,
        timeout = timeout_s,
        metadata = metadata,
        envVars = env_vars or json.object(),
        secure = true,
    }, { retry = true })
    if not status then return nil, body, code end
    if status ~= 201 and status ~= 200 then return nil, control_error(status, body), status end
    if type(body) ~= "table" or type(body.sandboxID) ~= "string" then return nil, "E2B: malformed create response" end
    return {
        id = body.sandboxID,
        token = body.envdAccessToken,
        domain = body.domain ~= json.null and body.domain or nil,
        envd_version = body.envdVersion,
    }
end

function _M.kill(id)
    local status, body = api("DELETE", "/sandboxes/" .. id, nil, { retry = true })
    if status == 204 or status == 404 then return true end
    return nil, status and control_error(status, body) or body
end

-- Sets the sandbox's time to live to `seconds` from now.
function _M.set_timeout(id, seconds)
    local status, body = api("POST", "/sandboxes/" .. id .. "/timeout", { timeout = seconds }, { retry = true })
    if status == 204 or status == 200 then return true end
    if status == 404 then return nil, "gone" end
    return nil, status and control_error(status, body) or body
end

local function urlencode(s)
    return (s:gsub("[^%w%-_%.~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- true when the sandbox still exists, false when E2B says it does not, nil on error.
function _M.exists(id)
    local status = api("GET", "/sandboxes/" .. id)
    if status == 200 then return true end
    if status == 404 then return false end
    return nil
end

-- Listing. GET /v2/sandboxes pages with a cursor (E2B infra, spec/openapi.yml
-- components.parameters paginationLimit/paginationNextToken, and
-- packages/api/internal/utils/pagination.go + handlers/sandboxes_list.go; the SDKs'
-- paginator, packages/python-sdk/e2b/sandbox_sync/paginator.py, reads the same header):
--   * `limit` is 1..100, default 100 (sandboxesDefaultLimit = sandboxesMaxLimit = 100);
--   * a page with more after it carries the header `X-Next-Token`, an opaque cursor
--     (base64url of "<startedAt RFC3339Nano>__<sandboxID>" of the page's last entry);
--     pass it back as `nextToken`. The last page has no such header;
--   * a token that does not parse answers 400 "Invalid next token";
--   * the order is startedAt descending, then sandboxID. The cursor is a position, not
--     an entry, so killing listed sandboxes between pages does not shift later pages.
local LIST_PAGE_LIMIT = 100

-- Running sandboxes whose metadata matches every key of `metadata`, reading at most
-- `max_pages` pages (each sandbox once, even if a page repeats one).
-- -> sandboxes | nil, err (the first page failed)
--    | sandboxes, err, pages (what was read before a later page failed, a repeated
--      token, or `max_pages` pages with a next token still to follow)
function _M.list(metadata, max_pages)
    local q = {}
    for k, v in pairs(metadata) do q[#q + 1] = k .. "=" .. v end
    table.sort(q)
    local base = "/v2/sandboxes?state=running&limit=" .. LIST_PAGE_LIMIT .. "&metadata=" ..
        urlencode(table.concat(q, "&"))
    local out, seen, tokens = {}, {}, {}
    local token, pages = nil, 0
    while true do
        if pages >= max_pages then
            return out, "E2B sandbox list: stopped after " .. pages .. " pages, a next token still followed", pages
        end
        local status, body, headers = api("GET", token and (base .. "&nextToken=" .. urlencode(token)) or base)
        local err
        if status ~= 200 then
            err = status and control_error(status, body) or body
        elseif type(body) ~= "table" or (next(body) ~= nil and body[1] == nil) then
            err = "E2B: malformed sandbox list response"
        end
        if err then
            if pages == 0 then return nil, err end
            return out, err .. " (after " .. pages .. " pages)", pages
        end
        pages = pages + 1
        for _, sb in ipairs(body) do
            local id = type(sb) == "table" and sb.sandboxID
            if type(id) == "string" and not seen[id] then
                seen[id] = true
                out[#out + 1] = sb
            end
        end
        token = type(headers) == "table" and headers["x-next-token"] or nil
        if token == nil or token == "" then return out, nil, pages end
        if tokens[token] then
            return out, "E2B sandbox list: page " .. pages .. " repeated an earlier next token", pages
        end
        tokens[token] = true
    end
end

-- --- data plane ------------------------------------------------------------

local function envd_base(sb)
    local s = config.get()
    if s.e2b_sandbox_url then return s.e2b_sandbox_url end
    return "https://" .. ENVD_PORT .. "-" .. sb.id .. "." .. (sb.domain or s.e2b_domain)
end

local function envd_headers(sb, extra)
    local h = {
        ["X-Access-Token"] = sb.token,
        ["E2b-Sandbox-Id"] = sb.id,
        ["E2b-Sandbox-Port"] = ENVD_PORT,
    }
    for k, v in pairs(extra or {}) do h[k] = v end
    return h
end

local function envd_allow_http()
    return config.get().e2b_sandbox_url ~= nil and config.get().e2b_sandbox_url:match("^http://") ~= nil
end

local CONNECT_HTTP = { [400] = "invalid_argument", [401] = "unauthenticated", [404] = "not_found",
    [429] = "resource_exhausted", [502] = "unavailable", [503] = "unavailable", [504] = "deadline_exceeded" }

-- Unary Connect call -> body | nil, code, message
function _M.unary(sb, rpc, msg)
    local res, err = host.http.request {
        method = "POST",
        url = envd_base(sb) .. "/" .. rpc,
        headers = envd_headers(sb, { ["Content-Type"] = "application/json", ["Connect-Protocol-Version"] = "1" }),
        body = json.encode(msg),
        timeout_ms = 30000,
        allow_http = envd_allow_http(),
    }
    if not res then return nil, "unavailable", err end
    local body = json.decode(res.body)
    if res.status ~= 200 then
        local code = type(body) == "table" and body.code or CONNECT_HTTP[res.status] or "unknown"
        return nil, code, type(body) == "table" and body.message or ("HTTP " .. res.status)
    end
    return body or json.object()
end

local function frame(payload)
    local n = #payload
    return string.char(0, (n >> 24) & 255, (n >> 16) & 255, (n >> 8) & 255, n & 255) .. payload
end

-- A decoder for Connect's enveloped stream: feed() chunks, next() messages.
local function frame_reader()
    local buf = ""
    local r = {}
    function r.feed(chunk) buf = buf .. chunk end
    -- -> flags, decoded_json | nil (need more bytes)
    function r.next()
        if #buf < 5 then return nil end
        local flags = buf:byte(1)
        local n = (buf:byte(2) << 24) | (buf:byte(3) << 16) | (buf:byte(4) << 8) | buf:byte(5)
        if #buf < 5 + n then return nil end
        local payload = buf:sub(6, 5 + n)
        buf = buf:sub(6 + n)
        return flags, json.decode(payload) or json.object()
    end
    return r
end

-- Opens a server stream (process.Process/Start or /Connect). -> stream | nil, code, msg
local function open_stream(sb, rpc, msg, timeout_ms)
    local headers = envd_headers(sb, {
        ["Content-Type"] = "application/connect+json",
        ["Keepalive-Ping-Interval"] = "50",
    })
    if timeout_ms and timeout_ms > 0 then headers["Connect-Timeout-Ms"] = tostring(math.floor(timeout_ms)) end
    local st, err = host.http.stream {
        method = "POST",
        url = envd_base(sb) .. "/" .. rpc,
        headers = headers,
        body = frame(json.encode(msg)),
        idle_timeout_s = 120, -- keepalives every 50 s: two missed means a dead stream
        allow_http = envd_allow_http(),
    }
    if not st then return nil, "unavailable", err end
    local status, herr = st:headers()
    if not status then return nil, "unavailable", herr end
    if status ~= 200 then
        local body = {}
        while true do
            local c = st:read()
            if not c then break end
            body[#body + 1] = c
        end
        local decoded = json.decode(table.concat(body))
        return nil, type(decoded) == "table" and decoded.code or CONNECT_HTTP[status] or "unknown",
            type(decoded) == "table" and decoded.message or ("HTTP " .. status)
    end
    return st
end

-- Follows a process event stream. handlers: on_start(pid), on_data(stream, bytes).
-- -> {exit_code, status} when the process ended; or nil, code, message.
local function follow(st, handlers)
    local reader = frame_reader()
    while true do
        local chunk, err = st:read()
        if not chunk then
            st:close()
            return nil, "dropped", err or "stream ended without an end-of-stream frame"
        end
        reader.feed(chunk)
        while true do
            local flags, msg = reader.next()
            if not flags then break end
            if flags & 2 == 2 then
                st:close()
                if type(msg.error) == "table" then return nil, msg.error.code or "unknown", msg.error.message end
                return nil, "dropped", "stream ended before the process did"
            end
            local ev = type(msg.event) == "table" and msg.event or {}
            if ev.start and handlers.on_start then
                handlers.on_start(ev.start.pid)
            elseif ev.data then
                for _, name in ipairs({ "stdout", "stderr", "pty" }) do
                    if type(ev.data[name]) == "string" and handlers.on_data then
                        local bytes = host.base64_decode(ev.data[name]) or ""
                        handlers.on_data(name == "stderr" and "stderr" or "stdout", bytes)
                    end
                end
            elseif ev["end"] then
                local e = ev["end"]
                -- drain the EndStream frame if it is already here, then report
                st:close()
                return { exit_code = math.tointeger(e.exitCode) or 0, status = e.status, error = e.error }
            end
        end
    end
end

_M.open_stream = open_stream
_M.follow = follow

function _M.signal(sb, pid, signal)
    return _M.unary(sb, "process.Process/SendSignal", { process = { pid = pid }, signal = signal or "SIGNAL_SIGKILL" })
end

function _M.upload(sb, path, content)
    local res, err = host.http.request {
        method = "POST",
        url = envd_base(sb) .. "/files?path=" .. urlencode(path) .. "&username=user",
        headers = envd_headers(sb, { ["Content-Type"] = "application/octet-stream" }),
        body = content,
        timeout_ms = 60000,
        allow_http = envd_allow_http(),
    }
    if not res then return nil, "E2B file upload failed (" .. err .. ")" end
    if res.status ~= 200 then return nil, "E2B file upload failed (HTTP " .. res.status .. ")" end
    return true
end

-- -> content (from byte `offset` when given) | nil, err
function _M.download(sb, path, offset)
    local res, err = host.http.request {
        method = "GET",
        url = envd_base(sb) .. "/files?path=" .. urlencode(path) .. "&username=user",
        headers = envd_headers(sb, offset and offset > 0 and { Range = "bytes=" .. offset .. "-" } or nil),
        timeout_ms = 60000,
        max_body = 64 * 1024 * 1024,
        allow_http = envd_allow_http(),
    }
    if not res then return nil, "E2B file download failed (" .. err .. ")" end
    if res.status == 404 then return nil, "not found" end
    if res.status == 416 then return "" end -- nothing past the offset yet
    if res.status == 200 and offset and offset > 0 then return res.body:sub(offset + 1) end -- Range ignored
    if res.status ~= 200 and res.status ~= 206 then
        return nil, "E2B file download failed (HTTP " .. res.status .. ")"
    end
    return res.body
end

return _M
