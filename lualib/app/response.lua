-- Response helpers: every body is JSON, encoded by host.json (integers stay
-- integers, empty arrays stay [], keys sorted).
local host = require "host"

local json = host.json

local _M = {}

local JSON_TYPE = "application/json"

-- The content-type of a JSON response without other headers: one table shared by
-- every such response. Nothing may change it; app.server copies before adding headers.
local JSON_HEADERS = { ["content-type"] = JSON_TYPE }

-- The JSON text of body; a body that cannot be encoded is a bug of the caller of
-- json/json_parts (level 3: this function, then json or json_parts, then their caller).
local function encode(body)
    local text, err = json.encode(body)
    if not text then
        error("response body is not encodable: " .. tostring(err), 3)
    end
    return text
end

-- A new headers table: the JSON content-type plus `headers`.
local function json_headers(headers)
    local h = { ["content-type"] = JSON_TYPE }
    if headers then
        for k, v in pairs(headers) do h[k] = v end
    end
    return h
end

-- The JSON text of `body` and the headers to send with it, for app.server's hot path:
-- the headers are the shared JSON_HEADERS when there are no others (read-only!).
function _M.json_parts(body, headers)
    local text = encode(body)
    return text, headers and json_headers(headers) or JSON_HEADERS
end

function _M.json(status, body, headers)
    local text = encode(body)
    return { status = status, headers = json_headers(headers), body = text }
end

function _M.error(status, message, request_id, headers)
    return _M.json(status, { error = message, request_id = request_id }, headers)
end

return _M
