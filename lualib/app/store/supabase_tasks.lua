-- Tasks in the Supabase store: the methods of app.store.sqlite_tasks with the same
-- semantics, over PostgREST. The queue runs in the database's functions
-- (db/supabase/002_task_engine.sql, called through /rpc): claim_next_task hands each
-- pending task to exactly one host (FOR UPDATE SKIP LOCKED, caps checked under an
-- advisory lock), and lease times come from the database clock, so hosts sharing
-- the database need not agree on the time.
--
-- Engine methods (claim_next, heartbeat, finish_run, recover_expired, task_for_run,
-- add_event, set_sandbox, task_status, events_since) are not owner-scoped: only the
-- engine (and the event stream, after the route checked ownership) calls them, with
-- ids it holds. Every method a route calls takes the caller's user_id and filters
-- on it: the service-role key bypasses row-level security.
local host = require "host"

local json = host.json
local null = json.null

local _M = {}

function _M.install(store, h)
    local request, get_rows, first, write, rpc, eq = h.request, h.get_rows, h.first, h.write, h.rpc, h.eq
    local task_row, iso, epoch_of, COLUMNS = h.task_row, h.iso, h.epoch_of, h.columns

    local SELECT = "select=" .. COLUMNS

    local function owned(user_id, id)
        return "id=" .. eq(id) .. "&user_id=" .. eq(user_id)
    end

    -- Creates a pending task. With an idempotency key, a retry returns the task the
    -- first request created (created = false) instead of queueing a second one.
    function store.create_task(_, user_id, f)
        local body = {
            user_id = user_id, project_id = f.project_id or null, repo_url = f.repo_url,
            target_branch = f.branch, agent = f.agent, status = "pending",
            chat_messages = json.array { { role = "user", content = f.prompt, timestamp = f.timestamp } },
            execution_metadata = json.object(), idempotency_key = f.idempotency_key or null,
        }
        local rows, err
        if f.idempotency_key then
            rows, err = write("POST", "/tasks", "on_conflict=user_id,idempotency_key&" .. SELECT, body,
                "resolution=ignore-duplicates")
        else
            rows, err = write("POST", "/tasks", SELECT, body)
        end
        if not rows then return nil, err end
        if rows[1] then return task_row(rows[1]), true end
        local row
        row, err = first("/tasks", SELECT .. "&user_id=" .. eq(user_id) .. "&idempotency_key=" ..
            eq(f.idempotency_key))
        if not row then return nil, err or "task vanished" end
        return task_row(row), false
    end

    function store.get_task(_, user_id, id)
        if math.type(id) ~= "integer" then return nil end
        local row, err = first("/tasks", SELECT .. "&" .. owned(user_id, id))
        if not row then return nil, err end
        return task_row(row)
    end

    local function filter_query(user_id, filters)
        local q = { "user_id=" .. eq(user_id) }
        if filters.status then q[#q + 1] = "status=" .. eq(filters.status) end
        if filters.project_id then q[#q + 1] = "project_id=" .. eq(filters.project_id) end
        return table.concat(q, "&")
    end

    -- filters: status, project_id, limit, offset
    function store.list_tasks(_, user_id, filters)
        local rows, err, code = get_rows("/tasks", SELECT .. "&" .. filter_query(user_id, filters) ..
            "&order=created_at.desc,id.desc&limit=" .. math.tointeger(filters.limit or 100) ..
            "&offset=" .. math.tointeger(filters.offset or 0))
        if not rows then
            if code == "PGRST103" then return json.array() end -- an offset past the end
            return nil, err
        end
        for i = 1, #rows do task_row(rows[i]) end
        return json.array(rows)
    end

    -- An exact count (Prefer: count=exact): the total after the slash of Content-Range.
    function store.count_tasks(_, user_id, filters)
        local rows, headers = request("GET", "/tasks", {
            query = "select=id&limit=1&" .. filter_query(user_id, filters), prefer = "count=exact",
        })
        if rows == nil then return nil, headers end
        local total = math.tointeger(tonumber(((headers or {})["content-range"] or ""):match("/(%d+)%s*$")))
        if not total then return nil, "postgrest answered no exact count" end
        return total
    end

    -- Claims the oldest pending task whose owner is under the per-user cap, if the
    -- global cap allows; marks it running with a lease. -> {id, user_id, attempts} | nil
    function store.claim_next(_, owner, lease_s, max_global, max_per_user)
        local rows, err = rpc("claim_next_task", {
            owner = owner, lease_seconds = math.ceil(lease_s), max_global = max_global, max_per_user = max_per_user,
        })
        if rows == nil then return nil, err end
        if type(rows) ~= "table" then return nil, "claim_next_task answered a non-array" end
        return rows[1]
    end

    -- The full row the workflow needs (engine columns included), with the SQLite
    -- store's types: cancel_requested 0/1, lease times epoch seconds.
    function store.task_for_run(_, id)
        local row, err = first("/tasks", "select=*&id=" .. eq(id))
        if not row then return nil, err end
        task_row(row)
        if type(row.cancel_requested) == "boolean" then row.cancel_requested = row.cancel_requested and 1 or 0 end
        for _, col in ipairs({ "lease_until", "heartbeat_at" }) do
            if type(row[col]) == "string" then row[col] = epoch_of(row[col]) or row[col] end
        end
        return row
    end

    -- Extends the lease; false when the lease was lost (another host took over).
    -- Also reports whether a cancel was requested. Idempotent: retried.
    function store.heartbeat(_, id, owner, lease_s)
        local res, err = rpc("heartbeat_task", { task_id = id, owner = owner, lease_seconds = math.ceil(lease_s) },
            { attempts = 2 })
        if res == nil then return nil, err end
        if type(res) ~= "table" then return nil, "heartbeat_task answered a non-object" end
        return res.held == true, res.cancel_requested == true
    end

    local RESULT_TEXT = { "commit_hash", "git_diff", "git_patch", "container_id" }
    local RESULT_JSON = { "changed_files", "execution_metadata" }

    -- Ends a run: status completed | failed | cancelled plus result fields. Only the
    -- lease holder can finish, so a run that lost its lease cannot overwrite. Guarded
    -- that way, a retry after a lost answer is harmless (it returns false).
    function store.finish_run(_, id, owner, f)
        local args = { task_id = id, owner = owner, status = f.status, error = f.error or null }
        -- finish_task_run keeps a column whose argument is NULL; the SQLite store sets
        -- a field given as json.null to NULL. Those are cleared right after.
        local clear = nil
        for _, col in ipairs(RESULT_TEXT) do
            if f[col] == null then
                clear = clear or json.object()
                clear[col] = null
            elseif f[col] ~= nil then
                args[col] = f[col]
            end
        end
        for _, col in ipairs(RESULT_JSON) do
            if f[col] ~= nil then args[col] = f[col] end
        end
        if f.assistant_message then args.assistant_message = f.assistant_message end
        local done, err = rpc("finish_task_run", args, { attempts = 3 })
        if done == nil then return nil, err end
        if done == true and clear then
            local _, cerr = write("PATCH", "/tasks", "select=id&id=" .. eq(id) .. "&status=" .. eq(f.status) ..
                "&lease_owner=is.null", clear)
            if cerr then
                host.log("warn", "supabase store: cannot clear result fields", { task_id = id, error = cerr })
            end
        end
        return done == true
    end

    -- Records the sandbox a run uses (container_id, as the original schema names it).
    -- -> changes (0 | 1) | nil, err
    function store.set_sandbox(_, id, owner, sandbox_id)
        local rows, err = write("PATCH", "/tasks", "select=id&id=" .. eq(id) .. "&lease_owner=" .. eq(owner),
            { container_id = sandbox_id })
        if not rows then return nil, err end
        return #rows
    end

    -- Leases that expired (their host died or hung): re-queue the task if it has
    -- attempts left, else fail it (cancel it when a cancel was requested).
    -- Returns {{id=, action="requeued"|"failed"|"cancelled", container_id=}}.
    function store.recover_expired(_, max_attempts)
        local rows, err = rpc("recover_expired_tasks", { max_attempts = max_attempts })
        if rows == nil then return nil, err end
        if type(rows) ~= "table" then return nil, "recover_expired_tasks answered a non-array" end
        local out = {}
        for i, r in ipairs(rows) do
            out[i] = { id = r.id, action = r.action, container_id = r.container_id }
        end
        return out
    end

    -- Cancel: a pending task is cancelled at once; a running one is flagged and its
    -- runner stops it. Returns "cancelled" | "cancelling" | "finished", or nil when
    -- the caller owns no such task.
    function store.request_cancel(_, user_id, id)
        if math.type(id) ~= "integer" then return nil end
        local res, err = rpc("request_cancel_task", { user_id = user_id, task_id = id })
        if res == nil then return nil, err end
        if res == null then return nil end
        if type(res) ~= "string" then return nil, "request_cancel_task answered a non-string" end
        return res
    end

    -- A follow-up run: appends the user's message and re-queues a finished task.
    -- Returns the task, or nil, "busy" when it is still pending or running.
    function store.start_followup(_, user_id, id, message)
        if math.type(id) ~= "integer" then return nil end
        local rows, err = rpc("start_followup", { user_id = user_id, task_id = id, message = message },
            { query = SELECT .. ",cancel_requested" })
        if rows == nil then return nil, err end
        if type(rows) ~= "table" then return nil, "start_followup answered a non-array" end
        local row = rows[1]
        if not row then
            local exists, gerr = first("/tasks", "select=id&" .. owned(user_id, id))
            if gerr then return nil, gerr end
            if not exists then return nil end
            return nil, "busy"
        end
        -- The re-queued task must be claimable: start_followup() leaves a cancel flag
        -- that recover_expired_tasks() may have left behind (the SQLite store clears it).
        if row.cancel_requested == true then
            local _, cerr = write("PATCH", "/tasks", "select=id&id=" .. eq(id) .. "&status=eq.pending",
                { cancel_requested = false })
            if cerr then return nil, cerr end
        end
        row.cancel_requested = nil
        return task_row(row)
    end

    -- Records the pull request, and the commit it was pushed at (so a later call
    -- knows whether a follow-up run changed the result since). -> changes | nil, err
    function store.set_pr(_, user_id, id, f)
        local row, err = first("/tasks", "select=execution_metadata&" .. owned(user_id, id))
        if not row then
            if err then return nil, err end
            return 0
        end
        local metadata = row.execution_metadata
        if type(metadata) ~= "table" or json.is_array(metadata) then metadata = json.object() end
        metadata.pr_commit_hash = f.commit_hash or null
        local rows, werr = write("PATCH", "/tasks", "select=id&" .. owned(user_id, id), {
            pr_branch = f.pr_branch or null, pr_number = f.pr_number or null, pr_url = f.pr_url or null,
            execution_metadata = metadata,
        })
        if not rows then return nil, werr end
        return #rows
    end

    function store.add_event(_, task_id, kind, data)
        local rows, err = write("POST", "/task_events", "select=id",
            { task_id = task_id, type = kind, data = data or json.object() })
        if not rows then return nil, err end
        if not rows[1] then return nil, "event insert returned nothing" end
        return rows[1].id
    end

    -- Events after `after_id`, oldest first (the caller owns the task: checked by the
    -- route). data is the JSON text, as the SQLite store returns it.
    function store.events_since(_, task_id, after_id, limit)
        local rows, err = get_rows("/task_events", "select=id,type,data::text,created_at&task_id=" ..
            eq(task_id) .. "&id=gt." .. math.tointeger(after_id or 0) .. "&order=id.asc&limit=" ..
            math.tointeger(limit or 500))
        if not rows then return nil, err end
        for i = 1, #rows do rows[i].created_at = iso(rows[i].created_at) end
        return rows
    end

    function store.task_status(_, id)
        local row, err = first("/tasks", "select=status,cancel_requested&id=" .. eq(id))
        if not row then return nil, err end
        return row.status, row.cancel_requested == true
    end
end

return _M
