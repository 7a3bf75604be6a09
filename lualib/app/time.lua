-- Timestamps: ISO 8601 UTC with milliseconds, the one format the API emits.
local host = require "host"

local _M = {}

function _M.iso8601(epoch)
    epoch = epoch or host.now()
    local secs = math.floor(epoch)
    local ms = math.floor((epoch - secs) * 1000 + 0.5)
    if ms >= 1000 then
        secs, ms = secs + 1, ms - 1000
    end
    return os.date("!%Y-%m-%dT%H:%M:%S", secs) .. string.format(".%03dZ", ms)
end

return _M
