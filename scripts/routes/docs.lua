-- GET /api/openapi.json: the API description kept in scripts/openapi.json,
-- read once while the generation loads and served as is.
local host = require "host"

local _M = {}

local document = host.asset("openapi.json")
assert(host.json.decode(document), "scripts/openapi.json is not valid JSON")

function _M.openapi()
    return { status = 200, headers = { ["content-type"] = "application/json" }, body = document }
end

return _M
