-- Codex, the real CLI (pinned in tools/agents/package.json): `codex exec --json`,
-- the prompt on stdin ("-"), commands and edits allowed inside the sandbox.
-- Codex ignores OPENAI_BASE_URL as an environment variable, so when it is set it
-- becomes a custom model provider (Responses API over plain SSE, no websockets).
local host = require "host"
local util = require "app.agent_util"

local _M = {
    name = "codex",
    description = "Codex CLI (OpenAI), codex exec with JSONL output",
}

function _M.available()
    if not host.secret("OPENAI_API_KEY") then return false, "OPENAI_API_KEY is not set" end
    return true
end

function _M.command(ctx)
    local s = ctx.settings
    local argv = { "codex", "exec", "--json", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
        "-c", "analytics.enabled=false", "-c", "features.plugins=false" }
    local base = s.openai_base_url
    if ctx.model then base = ctx.model.base .. "/openai/v1" end -- aicode's model proxy
    if base then
        -- The URL lands in a TOML string: refuse anything that could break out of it.
        assert(base:match("^https?://[%w%.%-:/_]+$"), "OPENAI_BASE_URL contains unexpected characters")
        argv[#argv + 1] = "-c"
        argv[#argv + 1] = "model_provider=aicode"
        argv[#argv + 1] = "-c"
        argv[#argv + 1] = 'model_providers.aicode={name="aicode",base_url="' .. base ..
            '",env_key="OPENAI_API_KEY",wire_api="responses",supports_websockets=false}'
    end
    argv[#argv + 1] = "-m"
    argv[#argv + 1] = s.codex_model
    argv[#argv + 1] = "-"
    local env = {
        -- Codex keeps its state in $HOME/.codex (a tmpfs in the sandbox).
        OPENAI_API_KEY = ctx.model and ctx.model.token or host.secret("OPENAI_API_KEY"),
    }
    return { argv = argv, env = env, stdin = util.prompt_with_history(ctx) }
end

function _M.parse(state, line)
    local msg = util.decode_line(line)
    if not msg then return nil end
    local events = {}
    local item = type(msg.item) == "table" and msg.item or nil
    if msg.type == "thread.started" then
        events[#events + 1] = { type = "agent", data = { agent = "codex", message = "started" } }
    elseif msg.type == "item.started" and item and item.type == "command_execution" then
        events[#events + 1] = { type = "tool_call", data = { id = item.id, name = "exec_command",
            input = util.clip(item.command) } }
    elseif msg.type == "item.completed" and item then
        if item.type == "agent_message" then
            state.last_text = item.text
            events[#events + 1] = { type = "assistant", data = { text = util.clip(item.text) } }
        elseif item.type == "command_execution" then
            events[#events + 1] = { type = "tool_result", data = { id = item.id, name = "exec_command",
                output = util.clip(item.aggregated_output), exit_code = item.exit_code,
                is_error = item.exit_code ~= nil and item.exit_code ~= 0 } }
        elseif item.type == "file_change" then
            events[#events + 1] = { type = "tool_result", data = { id = item.id, name = "file_change",
                output = util.clip(host.json.encode(item.changes or host.json.array {})) } }
        end
    elseif msg.type == "turn.completed" then
        state.usage = msg.usage
    elseif msg.type == "turn.failed" or msg.type == "error" then
        local e = type(msg.error) == "table" and msg.error.message or msg.message
        -- Codex often wraps the API's own JSON error in its message: show its text.
        if type(e) == "string" and e:match("^%s*{") then
            local inner = util.decode_line(e:match("^%s*(.-)%s*$"))
            local m = inner and (type(inner.error) == "table" and inner.error.message or inner.message)
            if type(m) == "string" then e = m end
        end
        state.error = type(e) == "string" and util.clip(e:sub(1, 300)) or "unknown error"
        events[#events + 1] = { type = "error", data = { message = state.error } }
    end
    return events
end

function _M.finish(state, res)
    local out = { answer = state.last_text, usage = state.usage }
    if state.error then
        out.error = "Codex failed: " .. state.error
    elseif res.code ~= 0 then
        out.error = "Codex " .. util.exit_reason(res) ..
            (util.last_line(res.stderr) and (": " .. util.last_line(res.stderr)) or "")
    end
    return out
end

return _M
