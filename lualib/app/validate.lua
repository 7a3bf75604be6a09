-- Input validation helpers for request bodies. Each check raises a 400 with a
-- message that names the field, so handlers read as a list of rules.
local host = require "host"
local errors = require "app.errors"

local null = host.json.null

local _M = {}

local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

function _M.is_uuid(s)
    return type(s) == "string" and s:match(UUID) ~= nil
end

-- The decoded JSON body must be an object (not an array, string or null).
function _M.body_object(req, message)
    local body = req.json
    if type(body) ~= "table" or host.json.is_array(body) then
        errors.bad_request(message or "Request body must be a JSON object")
    end
    return body
end

function _M.optional_string(body, field, max_len)
    local v = body[field]
    if v == nil or v == null then return nil end
    if type(v) ~= "string" then errors.bad_request(field .. " must be a string") end
    if max_len and #v > max_len then
        errors.bad_request(field .. " must be at most " .. max_len .. " bytes")
    end
    if not utf8.len(v) then errors.bad_request(field .. " must be valid UTF-8") end
    return v
end

function _M.optional_boolean(body, field)
    local v = body[field]
    if v == nil or v == null then return nil end
    if type(v) ~= "boolean" then errors.bad_request(field .. " must be a boolean") end
    return v
end

function _M.optional_object(body, field)
    local v = body[field]
    if v == nil or v == null then return nil end
    if type(v) ~= "table" or host.json.is_array(v) then
        errors.bad_request(field .. " must be an object")
    end
    return v
end

-- Rejects fields outside `allowed` (a set), naming them: no silent mass assignment.
function _M.only_fields(body, allowed)
    local unknown = {}
    for k in pairs(body) do
        if not allowed[k] then unknown[#unknown + 1] = tostring(k) end
    end
    if #unknown > 0 then
        table.sort(unknown)
        errors.bad_request("Unknown or read-only field(s): " .. table.concat(unknown, ", "))
    end
end

return _M
