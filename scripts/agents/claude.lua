-- Claude Code, the real CLI (pinned in tools/agents/package.json), headless:
-- `claude -p --output-format stream-json --verbose`, the prompt on stdin, file
-- edits and shell allowed inside the sandbox (it runs there as an unprivileged
-- user, so --dangerously-skip-permissions is accepted). Each stream-json line
-- becomes an event; the final `result` line carries the answer, usage and cost.
local host = require "host"
local util = require "app.agent_util"

local json = host.json

local _M = {
    name = "claude",
    description = "Claude Code (Anthropic), headless with stream-json output",
}

function _M.available()
    if not host.secret("ANTHROPIC_API_KEY") then return false, "ANTHROPIC_API_KEY is not set" end
    return true
end

function _M.command(ctx)
    local s = ctx.settings
    local argv = { "claude", "-p", "--output-format", "stream-json", "--verbose", "--dangerously-skip-permissions" }
    if s.claude_model then
        argv[#argv + 1] = "--model"
        argv[#argv + 1] = s.claude_model
    end
    local env = {
        DISABLE_TELEMETRY = "1",
        DISABLE_AUTOUPDATER = "1",
        DISABLE_ERROR_REPORTING = "1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = "1",
    }
    if ctx.model then
        -- Through aicode's model proxy: the sandbox never holds the real key.
        env.ANTHROPIC_BASE_URL = ctx.model.base .. "/anthropic"
        env.ANTHROPIC_API_KEY = ctx.model.token
    else
        env.ANTHROPIC_API_KEY = host.secret("ANTHROPIC_API_KEY")
        if s.anthropic_base_url then env.ANTHROPIC_BASE_URL = s.anthropic_base_url end
    end
    return { argv = argv, env = env, stdin = util.prompt_with_history(ctx) }
end

local function tool_result_text(content)
    if type(content) == "string" then return content end
    if type(content) ~= "table" then return "" end
    local parts = {}
    for _, c in ipairs(content) do
        if type(c) == "table" and c.type == "text" then parts[#parts + 1] = c.text end
    end
    return table.concat(parts, "\n")
end

function _M.parse(state, line)
    local msg = util.decode_line(line)
    if not msg then return nil end
    local events = {}
    if msg.type == "system" and msg.subtype == "init" then
        events[#events + 1] = { type = "agent", data = { agent = "claude", model = msg.model, message = "started" } }
    elseif msg.type == "assistant" and type(msg.message) == "table" then
        for _, c in ipairs(msg.message.content or {}) do
            if c.type == "text" and c.text ~= "" then
                state.last_text = c.text
                events[#events + 1] = { type = "assistant", data = { text = util.clip(c.text) } }
            elseif c.type == "tool_use" then
                events[#events + 1] = { type = "tool_call", data = { id = c.id, name = c.name,
                    input = util.clip(json.encode(c.input or json.object())) } }
            end
        end
    elseif msg.type == "user" and type(msg.message) == "table" then
        for _, c in ipairs(msg.message.content or {}) do
            if type(c) == "table" and c.type == "tool_result" then
                events[#events + 1] = { type = "tool_result", data = { id = c.tool_use_id,
                    output = util.clip(tool_result_text(c.content)), is_error = c.is_error == true } }
            end
        end
    elseif msg.type == "result" then
        state.result = msg
    end
    return events
end

function _M.finish(state, res)
    local r = state.result
    local out = {}
    if r then
        out.answer = type(r.result) == "string" and r.result or state.last_text
        out.usage = r.usage
        out.cost_usd = r.total_cost_usd
        -- Claude Code reports subtype "success" even when the API failed: is_error
        -- decides; the subtype is only informative when it names a reason.
        if r.is_error or (r.subtype and r.subtype ~= "success") then
            local why = r.subtype and r.subtype ~= "success" and (" (" .. tostring(r.subtype) .. ")") or ""
            out.error = "Claude Code failed" .. why ..
                (type(r.result) == "string" and (": " .. util.clip(r.result:sub(1, 300))) or "")
        end
    else
        out.answer = state.last_text
    end
    if not out.error and res.code ~= 0 then
        out.error = "Claude Code " .. util.exit_reason(res) ..
            (util.last_line(res.stderr) and (": " .. util.last_line(res.stderr)) or "")
    end
    return out
end

return _M
