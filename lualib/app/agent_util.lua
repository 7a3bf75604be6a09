-- Helpers shared by the agent modules in scripts/agents/.
local host = require "host"
local text_util = require "app.text"

local json = host.json

local _M = {}

local MAX_TEXT = 8192 -- per event field: events are for watching, the repository holds the work

function _M.clip(s)
    if type(s) ~= "string" then return s end
    if #s > MAX_TEXT then return text_util.valid_utf8(text_util.clip(s, MAX_TEXT)) .. "\n... (truncated)" end
    return text_util.valid_utf8(s)
end

-- Decodes one JSONL line; nil for anything that is not a JSON object.
function _M.decode_line(line)
    if line:sub(1, 1) ~= "{" then return nil end
    local v = json.decode(line)
    if type(v) ~= "table" then return nil end
    return v
end

-- The prompt for a model-backed agent: a follow-up carries the conversation so
-- far, since the agent starts fresh on a repository that already has its earlier
-- changes applied.
function _M.prompt_with_history(ctx)
    if not ctx.history or #ctx.history == 0 then return ctx.prompt end
    local parts = { "This task continues earlier work. Your previous changes are already applied to the " ..
        "repository. The conversation so far:\n" }
    for _, m in ipairs(ctx.history) do
        local who = m.role == "assistant" and "Assistant" or "User"
        parts[#parts + 1] = who .. ": " .. tostring(m.content) .. "\n"
    end
    parts[#parts + 1] = "\nNew request:\n" .. ctx.prompt
    return table.concat(parts)
end

-- The last non-empty stderr line, for a readable failure message.
function _M.last_line(text)
    local last
    for line in (text or ""):gmatch("[^\n]+") do
        if line:match("%S") then last = line end
    end
    return last and text_util.valid_utf8(text_util.clip(last, 300)) or nil
end

-- Common "why did the process stop" text.
function _M.exit_reason(res)
    if res.timed_out then return "timed out" end
    if res.signal then return "was killed by signal " .. res.signal end
    return "exited with status " .. tostring(res.code)
end

return _M
