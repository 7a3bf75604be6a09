-- The task engine: a durable queue in the store. One loop per process (on worker
-- 0) claims pending tasks with a lease, within MAX_CONCURRENT_TASKS and
-- MAX_TASKS_PER_USER, and runs each in its own background coroutine. A watchdog per
-- run renews the lease, notices cancel requests and enforces TASK_TIMEOUT by
-- killing the sandbox's processes. Leases that expire (a crashed or killed host)
-- are recovered: the task is re-queued, or failed once its attempts are used up,
-- and its sandbox's leftovers are removed.
local host = require "host"
local chat = require "app.chat"
local config = require "app.config"
local run_mod = require "app.run"
local store = require "app.store"
-- Loaded with the generation: a broken workflow edit is refused by the reload
-- instead of failing the next task. Each generation runs its own version.
local workflow = require "workflows.task"

local _M = {}

-- Identifies this VM's leases; a reload gets a new one, and the old VM keeps
-- renewing the leases of the runs it still has.
local OWNER = "aicode-" .. host.random_hex(6)
local POLL_S, WAKE_CHECK_S, WATCH_S, RECOVER_EVERY_S = 0.2, 0.02, 0.5, 2

-- start-task (on any worker of this process) bumps this counter, so the engine
-- claims at once instead of at its next poll; other hosts find the task by polling.
local WAKE_KEY = "engine:wake"
function _M.wake()
    host.shared.incr(WAKE_KEY, 1, 86400)
end

local function log(level, msg, fields)
    host.log(level, msg, fields)
end

local function cleanup_sandbox(container_id)
    if type(container_id) ~= "string" then return end
    local provider, name = container_id:match("^(%w+):(.+)$")
    if provider == "local" or provider == "e2b" then require("app.sandbox." .. provider).cleanup(name) end
end

-- E2B sandboxes tagged by aicode whose task is not running (a crash, a lost
-- kill): killed at start and periodically.
local function reap()
    if config.get().sandbox_provider ~= "e2b" then return end
    local killed, err = require("app.sandbox.e2b").reap(function(id) return (store:task_status(id)) end)
    if not killed then
        log("warn", "engine: E2B orphan reaper failed", { error = tostring(err) })
    elseif killed > 0 then
        log("warn", "engine: killed orphaned E2B sandboxes", { count = killed })
    end
end

local function recover()
    local recovered, err = store:recover_expired(config.get().task_max_attempts)
    if not recovered then
        log("warn", "engine: cannot recover expired leases", { error = tostring(err) })
        return
    end
    for _, r in ipairs(recovered) do
        log("warn", "engine: recovered an interrupted task", { task_id = r.id, action = r.action })
        cleanup_sandbox(r.container_id)
        store:add_event(r.id, "status", {
            status = r.action == "requeued" and "pending" or r.action,
            message = r.action == "requeued" and "The server running this task stopped; the task was queued again"
                or "The server running this task stopped",
        })
    end
end


local function finish(run, outcome, err)
    local s = config.get()
    local f
    if run.aborted == "lease lost" then
        log("warn", "engine: lease lost, another host owns the task now", { task_id = run.id })
        return
    elseif run.aborted == "cancelled" then
        f = { status = "cancelled", error = "Cancelled" }
    elseif run.aborted == "timeout" then
        f = { status = "failed", error = "Task timed out after " .. s.task_timeout .. " seconds" }
    elseif outcome then
        f = run.finish
    else
        local msg = type(err) == "table" and err.message or "internal error"
        if type(err) == "table" and err.step then msg = err.step .. ": " .. msg end
        if type(err) ~= "table" or not err.step then
            log("error", "engine: workflow error", { task_id = run.id, error = tostring(type(err) == "table"
                and (err.message or err.aborted) or err) })
        end
        f = { status = "failed", error = run:sanitize(msg) }
    end
    local ok, ferr = store:finish_run(run.id, run.owner, f)
    if ok == nil then error(ferr, 0) end
    store:add_event(run.id, "status", { status = f.status, error = f.error })
end

local function watchdog(run)
    local s = config.get()
    local renew_every = math.max(1, math.floor(s.task_lease_seconds / 3 / WATCH_S))
    local ticks = 0
    while not run.done do
        host.sleep(WATCH_S)
        if run.done then break end
        ticks = ticks + 1
        if host.monotonic_ms() > run.deadline_ms then
            run:abort("timeout")
        elseif ticks % renew_every == 0 then
            local held, cancel = store:heartbeat(run.id, run.owner, s.task_lease_seconds)
            if held == false then run:abort("lease lost") elseif cancel then run:abort("cancelled") end
        else
            local _, cancel = store:task_status(run.id)
            if cancel then run:abort("cancelled") end
        end
    end
end

local function run_task(id)
    local s = config.get()
    local task, err = store:task_for_run(id)
    if not task then
        log("error", "engine: claimed task vanished", { task_id = id, error = tostring(err) })
        return
    end
    local run = run_mod.new(task, OWNER, {
        timeout_s = s.task_timeout,
        github_token = host.vault.take("github_token:" .. id),
    })
    run.prompt, run.history, run.followup = chat.latest_user(task)
    if s.model_proxy == "on" then
        -- The agent's only credential: valid for this run, only at our model proxy.
        run.model_token = host.random_hex(32)
        host.vault.put("model_token:" .. run.model_token, tostring(id), s.task_timeout + 120)
    end
    if task.project_id and task.project_id ~= host.json.null then
        local project = store:get_project(task.user_id, task.project_id)
        local setup = project and project.settings and project.settings.setup_script
        if type(setup) == "string" and setup ~= "" then run.setup_script = setup end
    end
    store:add_event(id, "status", { status = "running", attempt = task.attempts })
    host.spawn(watchdog, run)
    local ok, res = pcall(workflow.run, run)
    run.done = true
    if run.model_token then host.vault.take("model_token:" .. run.model_token) end
    if run.sandbox then
        run.sandbox:destroy()
    end
    if not ok and type(res) == "table" and res.aborted then run.aborted = res.aborted end
    -- Saving must not die silently (the lease would expire and the result be lost):
    -- if the result cannot be stored, the task fails with a readable error instead.
    local saved, serr = pcall(finish, run, ok, res)
    if not saved then
        log("error", "engine: cannot save the task result", { task_id = id, error = tostring(serr) })
        pcall(store.finish_run, store, id, run.owner, { status = "failed",
            error = "The result could not be saved (an internal error was logged)" })
    end
end

local function loop()
    local s = config.get()
    local last_recover, last_reap = -math.huge, -math.huge
    log("info", "engine started", { owner = OWNER })
    while host.is_current_generation() do
        local now = host.monotonic_ms() / 1000
        if now - last_reap >= s.e2b_reap_interval then
            last_reap = now
            host.spawn(reap)
        end
        if now - last_recover >= RECOVER_EVERY_S then
            recover()
            last_recover = now
        end
        while true do
            local claimed, err = store:claim_next(OWNER, s.task_lease_seconds, s.max_concurrent_tasks,
                s.max_tasks_per_user)
            if err then log("warn", "engine: claim failed", { error = tostring(err) }) end
            if not claimed then break end
            host.spawn(run_task, claimed.id)
        end
        -- Sleep until the next poll, or until a start-task in this process wakes us.
        local seen, slept = host.shared.get(WAKE_KEY), 0
        while slept < POLL_S and host.shared.get(WAKE_KEY) == seen do
            host.sleep(WAKE_CHECK_S)
            slept = slept + WAKE_CHECK_S
        end
    end
    log("info", "engine loop handed over to the reloaded scripts", { owner = OWNER })
end

-- Called by app.server.start on each worker; the engine runs on worker 0.
function _M.start(worker_index)
    if worker_index ~= 0 or config.get().engine == "off" then return end
    if config.get().sandbox_provider == "local" then
        host.spawn(function()
            local ok, err = require("app.sandbox.local").self_test()
            if not ok then
                log("error", "engine: the local sandbox does not work; every task will fail until fixed",
                    { error = tostring(err) })
            end
        end)
    end
    host.spawn(loop)
end

_M.owner = OWNER

return _M
