-- Response helpers: every body is JSON, encoded by host.json (integers stay
-- integers, empty arrays stay [], keys sorted).
local host = require "host"

local json = host.json

local _M = {}

local JSON_TYPE = "application/json"

-- The content-type of a JSON response without other headers: one table shared by
-- every such response. Nothing may change it; app.server copies before adding headers.
local JSON_HEADERS = { ["content-type"] = JSON_TYPE }

-- The JSON text of `body` and the headers to send with it, for app.server's hot path:
-- the headers are the shared JSON_HEADERS when there are no others (read-only!).
function _M.json_parts(body, headers)
    local text, err = json.encode(body)
    if not text then
        error("response body is not encodable: " .. tostring(err), 2)
    end
    if not headers then return text, JSON_HEADERS end
    local h = { ["content-type"] = JSON_TYPE }
    for k, v in pairs(headers) do h[k] = v end
    return text, h
end

function _M.json(status, body, headers)
    local text, err = json.encode(body)
    if not text then
        error("response body is not encodable: " .. tostring(err), 2)
    end
    local h = { ["content-type"] = JSON_TYPE }
    if headers then
        for k, v in pairs(headers) do h[k] = v end
    end
    return { status = status, headers = h, body = text }
end

function _M.error(status, message, request_id, headers)
    return _M.json(status, { error = message, request_id = request_id }, headers)
end

return _M
