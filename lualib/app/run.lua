-- One run of a task's workflow: the context object the workflow script and its
-- steps receive. It records events, times steps, and carries the cancel/timeout
-- state the engine's watchdog sets.
local host = require "host"
local store = require "app.store"
local text_util = require "app.text"

local json = host.json

local _M = {}
local run_mt = { __index = _M }

local MAX_EVENTS = 5000 -- per run; beyond this output events are dropped (and that is said once)

function _M.new(task, owner, opts)
    return setmetatable({
        task = task,
        id = task.id,
        owner = owner,
        github_token = opts.github_token,
        deadline_ms = host.monotonic_ms() + opts.timeout_s * 1000,
        timeout_s = opts.timeout_s,
        events = 0,
        aborted = nil,  -- "cancelled" | "timeout" | "lease lost"
        done = false,
        metadata = {},
    }, run_mt)
end

-- Removes the run's secrets from text that leaves the engine (events, errors).
function _M:sanitize(text)
    text = tostring(text or "")
    local token = self.github_token
    if token and #token >= 4 then
        local start = 1
        while true do
            local i, j = text:find(token, start, true)
            if not i then break end
            text = text:sub(1, i - 1) .. "[redacted]" .. text:sub(j + 1)
            start = i + 10
        end
    end
    return text
end

function _M:emit(kind, data)
    self.events = self.events + 1
    if self.events > MAX_EVENTS and (kind == "output" or kind == "assistant" or kind == "tool_call"
            or kind == "tool_result") then
        if self.events == MAX_EVENTS + 1 then
            store:add_event(self.id, "notice", { message = "event limit reached: further output is not recorded" })
        end
        return
    end
    -- Output arrives in raw chunks that may split a character: keep events valid UTF-8.
    for k, v in pairs(data or {}) do
        if type(v) == "string" then data[k] = text_util.valid_utf8(self:sanitize(v)) end
    end
    store:add_event(self.id, kind, data or json.object())
end

-- Raises when the run must stop (cancel, timeout, lost lease).
function _M:check()
    if self.aborted then error({ aborted = self.aborted }, 0) end
end

function _M:remaining_s()
    return math.max(1, (self.deadline_ms - host.monotonic_ms()) / 1000)
end

-- Runs one named step: events "step" started/finished/failed with its duration.
-- A step fails by raising a string (a readable reason) or returning nil, err.
function _M:step(name, fn)
    self:check()
    self:emit("step", { name = name, state = "started" })
    local started = host.monotonic_ms()
    local ok, res, err = pcall(fn, self)
    local duration = host.monotonic_ms() - started
    if ok and res == nil and err ~= nil then ok, res = false, err end
    if not ok then
        if type(res) == "table" and res.aborted then
            self:emit("step", { name = name, state = "aborted", duration_ms = duration })
            error(res, 0)
        end
        if self.aborted then error({ aborted = self.aborted }, 0) end
        -- A step whose command hit the run's own deadline failed because the task
        -- timed out: say that, not the step's reason (which races the watchdog).
        if host.monotonic_ms() >= self.deadline_ms - 1000 then
            self.aborted = "timeout"
            self:emit("step", { name = name, state = "aborted", duration_ms = duration })
            error({ aborted = "timeout" }, 0)
        end
        self:emit("step", { name = name, state = "failed", duration_ms = duration })
        error({ step = name, message = self:sanitize(type(res) == "string" and res or tostring(res)) }, 0)
    end
    self:emit("step", { name = name, state = "finished", duration_ms = duration })
    self:check()
    return res
end

-- Stops the work now: every process of the sandbox is killed.
function _M:abort(reason)
    if self.aborted or self.done then return end
    self.aborted = reason
    if self.sandbox then self.sandbox:kill() end
end

return _M
