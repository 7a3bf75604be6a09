-- A task's chat_messages: [{role, content, timestamp}], the first user message
-- being the task's prompt (as in the original) and the last one the request the
-- next run answers.
local _M = {}

-- The task's prompt: the first user message, or "".
function _M.first_user(task)
    for _, m in ipairs(task.chat_messages or {}) do
        if m.role == "user" then return m.content end
    end
    return ""
end

-- The latest user message, the conversation before it, and whether that makes
-- this a follow-up run. -> prompt, history, followup
function _M.latest_user(task)
    local messages = task.chat_messages or {}
    local last, history = nil, {}
    for i, m in ipairs(messages) do
        if m.role == "user" then last = i end
    end
    for i = 1, (last or 1) - 1 do history[#history + 1] = messages[i] end
    return last and messages[last].content or "", history, #history > 0
end

return _M
