-- Tasks: start, status, list, details, follow-up chat, cancel, live events,
-- diff. Shapes follow the original API (seed-contract §1.3); every route is
-- owner-scoped (another user's task is a 404).
local host = require "host"
local agents = require "app.agents"
local chat = require "app.chat"
local engine = require "app.engine"
local errors = require "app.errors"
local git = require "app.git"
local store = require "app.store"
local time = require "app.time"
local validate = require "app.validate"

local json = host.json
local null = json.null

local _M = {}

local MAX_PROMPT = 100 * 1024
local TERMINAL = { completed = true, failed = true, cancelled = true }
local TOKEN_TTL_S = 24 * 3600 -- how long a queued task's GitHub token waits in memory

local check_store = errors.check_store

local function github_token(body)
    local token = validate.optional_string(body, "github_token", 1000)
    if token == "" then token = nil end
    if token and token:find("[%s%c]") then errors.bad_request("github_token contains invalid characters") end
    return token
end

local first_user_message = chat.first_user

local function find(req)
    local task = check_store(store:get_task(req.user_id, req.params.id))
    if not task then errors.not_found("Task not found") end
    return task
end

function _M.start(req)
    local body = validate.body_object(req, "No data provided")
    if next(body) == nil then errors.bad_request("No data provided") end
    local prompt = validate.optional_string(body, "prompt", MAX_PROMPT)
    local repo_url = validate.optional_string(body, "repo_url", 300)
    if not prompt or prompt:match("^%s*$") or not repo_url or repo_url == "" then
        errors.bad_request("prompt and repo_url are required")
    end
    local repo, why = git.parse_repo_url(repo_url)
    if not repo then errors.bad_request(why) end
    local branch = validate.optional_string(body, "branch", 255) or "main"
    if not git.valid_branch(branch) then errors.bad_request("branch is not a valid git branch name") end
    local model = validate.optional_string(body, "model", 64) or "claude"
    if not agents.get(model) then
        errors.bad_request("model must be one of: " .. table.concat(agents.names(), ", "))
    end
    local token = github_token(body)
    local project_id = body.project_id
    if project_id ~= nil and project_id ~= null then
        if math.type(project_id) ~= "integer" then errors.bad_request("project_id must be an integer") end
        if not check_store(store:get_project(req.user_id, project_id)) then errors.not_found("Project not found") end
    else
        project_id = nil
    end
    local key = req.headers["idempotency-key"]
    if key and (#key > 200 or key:find("[%c]")) then errors.bad_request("Idempotency-Key is invalid") end

    local task, created = check_store(store:create_task(req.user_id, {
        prompt = prompt, repo_url = repo_url, branch = branch, agent = model, project_id = project_id,
        idempotency_key = key, timestamp = time.iso8601(),
    }))
    if not task then errors.store_unavailable("task insert returned nothing") end
    if created then
        if token then host.vault.put("github_token:" .. task.id, token, TOKEN_TTL_S) end
        store:add_event(task.id, "status", { status = "pending" })
        engine.wake()
    end
    return 200, { status = "success", task_id = task.id, message = "Task started successfully" }
end

function _M.status(req)
    local t = find(req)
    return 200, {
        status = "success",
        task = {
            id = t.id, status = t.status, prompt = first_user_message(t), repo_url = t.repo_url,
            branch = t.target_branch, model = t.agent, commit_hash = t.commit_hash,
            changed_files = t.changed_files, error = t.error, created_at = t.created_at,
            project_id = t.project_id, started_at = t.started_at, completed_at = t.completed_at,
            pr_url = t.pr_url, pr_number = t.pr_number,
        },
    }
end

local STATUSES = { pending = true, running = true, completed = true, failed = true, cancelled = true }

local function int_param(q, name, default, min, max)
    local v = q[name]
    if v == nil or v == "" then return default end
    local n = math.tointeger(tonumber(v))
    if not n or n < min or n > max then errors.bad_request(name .. " must be an integer between " .. min ..
        " and " .. max) end
    return n
end

function _M.list(req)
    local q = req.query_params
    local filters = {
        limit = int_param(q, "limit", 100, 1, 500),
        offset = int_param(q, "offset", 0, 0, 1000000000),
    }
    if q.status and q.status ~= "" then
        if not STATUSES[q.status] then errors.bad_request("status must be one of pending, running, completed, " ..
            "failed, cancelled") end
        filters.status = q.status
    end
    -- As the original: a project_id that is not a positive integer is ignored.
    local pid = math.tointeger(tonumber(q.project_id or ""))
    if pid and pid > 0 then filters.project_id = pid end
    local rows = check_store(store:list_tasks(req.user_id, filters))
    local total = check_store(store:count_tasks(req.user_id, filters))
    local map = json.object()
    for _, t in ipairs(rows) do
        local prompt = first_user_message(t)
        if utf8.len(prompt) and utf8.len(prompt) > 50 then
            prompt = prompt:sub(1, utf8.offset(prompt, 51) - 1) .. "..."
        end
        map[tostring(t.id)] = {
            id = t.id, status = t.status, created_at = t.created_at, prompt = prompt,
            has_patch = t.git_patch ~= null and t.git_patch ~= "" and t.git_patch ~= nil,
            project_id = t.project_id, repo_url = t.repo_url, agent = t.agent, chat_messages = t.chat_messages,
        }
    end
    return 200, { status = "success", tasks = map, total_tasks = total }
end

function _M.get(req)
    return 200, { status = "success", task = find(req) }
end

function _M.diff(req)
    local t = find(req)
    return 200, { status = "success", git_diff = t.git_diff, task_id = t.id }
end

function _M.chat(req)
    local body = validate.body_object(req, "No data provided")
    if next(body) == nil then errors.bad_request("No data provided") end
    local content = validate.optional_string(body, "content", MAX_PROMPT)
    if not content or content:match("^%s*$") then errors.bad_request("content is required") end
    local role = validate.optional_string(body, "role", 20) or "user"
    if role ~= "user" then errors.bad_request("role must be \"user\": assistant messages come from the agent") end
    local token = github_token(body)
    find(req)
    local task, err = check_store(store:start_followup(req.user_id, req.params.id,
        { role = "user", content = content, timestamp = time.iso8601() }))
    if err == "busy" then errors.conflict("The task is still running; wait for it to finish or cancel it") end
    if not task then errors.not_found("Task not found") end
    if token then host.vault.put("github_token:" .. task.id, token, TOKEN_TTL_S) end
    store:add_event(task.id, "status", { status = "pending", followup = true })
    engine.wake()
    return 200, { status = "success", task = task }
end

function _M.cancel(req)
    local result = check_store(store:request_cancel(req.user_id, req.params.id))
    if not result then errors.not_found("Task not found") end
    if result == "finished" then errors.conflict("The task has already finished") end
    if result == "cancelled" then store:add_event(req.params.id, "status", { status = "cancelled" }) end
    return 200, { status = "success", task_id = req.params.id, task_status = result == "cancelled" and "cancelled"
        or "cancelling" }
end

-- POST /api/tasks/<id>/events-token: a 5-minute token for this task's event
-- stream, for EventSource (which cannot send an Authorization header).
function _M.events_token(req)
    find(req)
    local token, expires_in = host.jwt.issue(req.user_id, "stream", "task:" .. req.params.id)
    return 200, { status = "success", token = token, expires_in = expires_in }
end

_M.events_scope = function(params) return "task:" .. tostring(params.id) end

local POLL_S, KEEPALIVE_S, MAX_STREAM_S = 0.25, 15, 30 * 60

local function sse(e)
    return "id: " .. e.id .. "\nevent: " .. e.type .. "\ndata: " ..
        json.encode({ id = e.id, type = e.type, data = json.decode(e.data) or json.object(),
            created_at = e.created_at }) .. "\n\n"
end

-- GET /api/tasks/<id>/events: Server-Sent Events, from the stored history (so a
-- late or reconnecting client sees everything after Last-Event-ID), then live
-- until the task ends.
function _M.events(req)
    find(req)
    local id = req.params.id
    local last = math.tointeger(tonumber(req.headers["last-event-id"] or req.query_params.last_event_id or "0")) or 0
    return {
        status = 200,
        headers = {
            ["content-type"] = "text/event-stream",
            ["cache-control"] = "no-cache",
            ["x-accel-buffering"] = "no",
        },
        stream = function(write)
            write(": connected\nretry: 2000\n\n")
            local started, quiet = host.monotonic_ms(), 0
            while host.monotonic_ms() - started < MAX_STREAM_S * 1000 do
                local events = store:events_since(id, last, 200)
                if events and #events > 0 then
                    local parts = {}
                    for i, e in ipairs(events) do
                        parts[i] = sse(e)
                        last = e.id
                    end
                    write(table.concat(parts))
                    quiet = 0
                else
                    local status = store:task_status(id)
                    if status == nil or TERMINAL[status] then
                        status = status or "deleted"
                        -- One more look: events written just before the status changed.
                        local tail = store:events_since(id, last, 200)
                        if not tail or #tail == 0 then
                            write("event: end\ndata: {\"status\":\"" .. tostring(status) .. "\"}\n\n")
                            return
                        end
                    else
                        quiet = quiet + POLL_S
                        if quiet >= KEEPALIVE_S then
                            write(": keep-alive\n\n")
                            quiet = 0
                        end
                        host.sleep(POLL_S)
                    end
                end
            end
        end,
    }
end

return _M
