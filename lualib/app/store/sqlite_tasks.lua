-- Tasks in the SQLite store: submission (idempotent), owner-scoped reads, the
-- durable queue (claim with a lease, heartbeat, recovery of expired leases),
-- cancellation, follow-up runs, results, and the stored event stream.
--
-- Engine methods (claim_next, heartbeat, finish_run, requeue_expired, task_for_run,
-- add_event) are not owner-scoped: only the engine calls them, with the ids it
-- claimed. Every method a route calls takes the caller's user_id.
local host = require "host"

local json = host.json
local null = json.null

local _M = {}

local NOW_ISO = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

function _M.install(store, h)
    local conn, failure, task_row, COLUMNS = h.conn, h.failure, h.task_row, h.columns

    local function first(sql, ...)
        local d, err = conn()
        if not d then return nil, err end
        local row, qerr, code = d:first(sql, ...)
        if qerr then return failure(qerr, code) end
        return row
    end

    -- -> changes, last_insert_rowid | nil, err
    local function run(sql, ...)
        local d, err = conn()
        if not d then return nil, err end
        local changes, rowid_or_err, code = d:run(sql, ...)
        if not changes then return failure(rowid_or_err, code) end
        return changes, rowid_or_err
    end

    -- Creates a pending task. With an idempotency key, a retry returns the task the
    -- first request created (created = false) instead of queueing a second one.
    function store.create_task(_, user_id, f)
        local messages = json.encode(json.array { { role = "user", content = f.prompt, timestamp = f.timestamp } })
        local changes, rowid = run([[INSERT INTO tasks
            (user_id, project_id, repo_url, target_branch, agent, status, chat_messages,
             execution_metadata, idempotency_key)
            VALUES (?, ?, ?, ?, ?, 'pending', ?, '{}', ?)
            ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING]],
            user_id, f.project_id or null, f.repo_url, f.branch, f.agent, messages, f.idempotency_key or null)
        if not changes then return nil, rowid end
        local row, err
        if changes == 0 then
            row, err = first("SELECT " .. COLUMNS .. " FROM tasks WHERE user_id = ? AND idempotency_key = ?",
                user_id, f.idempotency_key)
        else
            row, err = first("SELECT " .. COLUMNS .. " FROM tasks WHERE id = ?", rowid)
        end
        if not row then return nil, err or "task vanished" end
        return task_row(row), changes > 0
    end

    function store.get_task(_, user_id, id)
        local row, err = first("SELECT " .. COLUMNS .. " FROM tasks WHERE id = ? AND user_id = ?", id, user_id)
        if not row then return nil, err end
        return task_row(row)
    end

    -- The owner-scoped WHERE clause of a task listing. -> sql, args
    local function task_filters(user_id, filters)
        local where, args = { "user_id = ?" }, { user_id }
        if filters.status then
            where[#where + 1] = "status = ?"
            args[#args + 1] = filters.status
        end
        if filters.project_id then
            where[#where + 1] = "project_id = ?"
            args[#args + 1] = filters.project_id
        end
        return table.concat(where, " AND "), args
    end

    -- filters: status, project_id, limit, offset
    function store.list_tasks(_, user_id, filters)
        local d, err = conn()
        if not d then return nil, err end
        local where, args = task_filters(user_id, filters)
        args[#args + 1] = filters.limit or 100
        args[#args + 1] = filters.offset or 0
        local rows, qerr, code = d:query("SELECT " .. COLUMNS .. " FROM tasks WHERE " .. where ..
            " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?", table.unpack(args))
        if not rows then return failure(qerr, code) end
        for i = 1, #rows do task_row(rows[i]) end
        return json.array(rows)
    end

    function store.count_tasks(_, user_id, filters)
        local where, args = task_filters(user_id, filters)
        local row, err = first("SELECT count(*) AS n FROM tasks WHERE " .. where, table.unpack(args))
        if not row then return nil, err end
        return row.n
    end

    -- Claims the oldest pending task whose owner is under the per-user cap, if the
    -- global cap allows; marks it running with a lease. One UPDATE ... RETURNING, so
    -- two claimers (threads or processes sharing the file) never get the same task.
    function store.claim_next(_, owner, lease_s, max_global, max_per_user)
        local now = host.now()
        local row, err = first([[UPDATE tasks
            SET status = 'running', lease_owner = ?, lease_until = ?, heartbeat_at = ?,
                attempts = attempts + 1, started_at = coalesce(started_at, ]] .. NOW_ISO .. [[),
                completed_at = NULL, error = NULL
            WHERE id = (
                SELECT t.id FROM tasks t
                WHERE t.status = 'pending' AND t.cancel_requested = 0
                  AND (SELECT count(*) FROM tasks r WHERE r.status = 'running') < ?
                  AND (SELECT count(*) FROM tasks r WHERE r.status = 'running' AND r.user_id = t.user_id) < ?
                ORDER BY t.id LIMIT 1)
            RETURNING id, user_id, attempts]], owner, now + lease_s, now, max_global, max_per_user)
        if err then return nil, err end
        return row
    end

    -- The full row the workflow needs (engine columns included).
    function store.task_for_run(_, id)
        local row, err = first("SELECT * FROM tasks WHERE id = ?", id)
        if not row then return nil, err end
        return task_row(row)
    end

    -- Extends the lease; false when the lease was lost (another host took over).
    -- Also reports whether a cancel was requested.
    function store.heartbeat(_, id, owner, lease_s)
        local now = host.now()
        local changes, err = run([[UPDATE tasks SET lease_until = ?, heartbeat_at = ?
            WHERE id = ? AND lease_owner = ? AND status = 'running']], now + lease_s, now, id, owner)
        if not changes then return nil, err end
        local row = first("SELECT cancel_requested FROM tasks WHERE id = ?", id)
        return changes > 0, row and row.cancel_requested == 1
    end

    -- Ends a run: status completed | failed | cancelled plus result fields. Only the
    -- lease holder can finish, so a run that lost its lease cannot overwrite.
    function store.finish_run(_, id, owner, f)
        local sets, args = {
            "status = ?", "completed_at = " .. NOW_ISO, "lease_owner = NULL", "lease_until = NULL",
            "error = ?", "cancel_requested = 0",
        }, { f.status, f.error or null }
        if f.status == "completed" then
            sets[#sets + 1] = "run_count = run_count + 1"
        end
        for _, col in ipairs({ "commit_hash", "git_diff", "git_patch", "container_id" }) do
            if f[col] ~= nil then
                sets[#sets + 1] = col .. " = ?"
                args[#args + 1] = f[col]
            end
        end
        for _, col in ipairs({ "changed_files", "execution_metadata" }) do
            if f[col] ~= nil then
                local encoded, jerr = json.encode(f[col])
                if not encoded then return nil, col .. ": " .. tostring(jerr) end
                sets[#sets + 1] = col .. " = ?"
                args[#args + 1] = encoded
            end
        end
        if f.assistant_message then
            local encoded, jerr = json.encode(f.assistant_message)
            if not encoded then return nil, "assistant message: " .. tostring(jerr) end
            sets[#sets + 1] = "chat_messages = json_insert(chat_messages, '$[#]', json(?))"
            args[#args + 1] = encoded
        end
        args[#args + 1] = id
        args[#args + 1] = owner
        local changes, err = run("UPDATE tasks SET " .. table.concat(sets, ", ") ..
            " WHERE id = ? AND lease_owner = ? AND status = 'running'", table.unpack(args))
        if not changes then return nil, err end
        return changes > 0
    end

    -- Records the sandbox a run uses (container_id, as the original schema names it).
    function store.set_sandbox(_, id, owner, sandbox_id)
        return run("UPDATE tasks SET container_id = ? WHERE id = ? AND lease_owner = ?", sandbox_id, id, owner)
    end

    -- Leases that expired (their host died or hung): re-queue the task if it has
    -- attempts left, else fail it. Returns {{id=, action="requeued"|"failed", container_id=}}.
    function store.recover_expired(_, max_attempts)
        local d, err = conn()
        if not d then return nil, err end
        local now = host.now()
        local rows, qerr, code = d:query([[SELECT id, attempts, container_id, cancel_requested FROM tasks
            WHERE status = 'running' AND lease_until IS NOT NULL AND lease_until < ?]], now)
        if not rows then return failure(qerr, code) end
        local out = {}
        for _, r in ipairs(rows) do
            local action
            if r.cancel_requested == 1 then
                action = "cancelled"
                run([[UPDATE tasks SET status = 'cancelled', completed_at = ]] .. NOW_ISO .. [[,
                    lease_owner = NULL, lease_until = NULL, error = 'Cancelled', cancel_requested = 0
                    WHERE id = ? AND status = 'running' AND lease_until < ?]], r.id, now)
            elseif r.attempts < max_attempts then
                action = "requeued"
                run([[UPDATE tasks SET status = 'pending', lease_owner = NULL, lease_until = NULL
                    WHERE id = ? AND status = 'running' AND lease_until < ?]], r.id, now)
            else
                action = "failed"
                run([[UPDATE tasks SET status = 'failed', completed_at = ]] .. NOW_ISO .. [[,
                    lease_owner = NULL, lease_until = NULL,
                    error = 'The task was interrupted (the server running it stopped) and was not retried again'
                    WHERE id = ? AND status = 'running' AND lease_until < ?]], r.id, now)
            end
            out[#out + 1] = { id = r.id, action = action, container_id = r.container_id }
        end
        return out
    end

    -- Cancel: a pending task is cancelled at once; a running one is flagged and its
    -- runner stops it. Returns the task's status after the call, or "finished"
    -- when it had already ended, or nil when the caller owns no such task.
    function store.request_cancel(_, user_id, id)
        local row, err = first("SELECT status FROM tasks WHERE id = ? AND user_id = ?", id, user_id)
        if not row then return nil, err end
        if row.status == "pending" then
            local changes = run([[UPDATE tasks SET status = 'cancelled', completed_at = ]] .. NOW_ISO ..
                [[, error = 'Cancelled' WHERE id = ? AND status = 'pending']], id)
            if changes == 1 then return "cancelled" end
            row = first("SELECT status FROM tasks WHERE id = ?", id)
        end
        if row.status == "running" then
            run("UPDATE tasks SET cancel_requested = 1 WHERE id = ? AND status = 'running'", id)
            return "cancelling"
        end
        return "finished"
    end

    -- A follow-up run: appends the user's message and re-queues a finished task.
    -- Returns the task, or nil, "busy" when it is still pending or running.
    function store.start_followup(store_self, user_id, id, message)
        local changes, err = run([[UPDATE tasks
            SET status = 'pending', error = NULL, completed_at = NULL, attempts = 0, cancel_requested = 0,
                chat_messages = json_insert(chat_messages, '$[#]', json(?))
            WHERE id = ? AND user_id = ? AND status IN ('completed', 'failed', 'cancelled')]],
            json.encode(message), id, user_id)
        if not changes then return nil, err end
        if changes == 0 then
            local row = first("SELECT status FROM tasks WHERE id = ? AND user_id = ?", id, user_id)
            if not row then return nil end
            return nil, "busy"
        end
        return store_self:get_task(user_id, id)
    end

    -- Records the pull request, and the commit it was pushed at (so a later call
    -- knows whether a follow-up run changed the result since).
    function store.set_pr(_, user_id, id, f)
        return run([[UPDATE tasks SET pr_branch = ?, pr_number = ?, pr_url = ?,
            execution_metadata = json_set(execution_metadata, '$.pr_commit_hash', ?)
            WHERE id = ? AND user_id = ?]], f.pr_branch, f.pr_number, f.pr_url, f.commit_hash or null, id, user_id)
    end

    function store.add_event(_, task_id, type, data)
        local encoded, jerr = json.encode(data or json.object())
        if not encoded then return nil, "event data: " .. tostring(jerr) end
        local changes, id = run("INSERT INTO task_events (task_id, type, data) VALUES (?, ?, ?)",
            task_id, type, encoded)
        if not changes then return nil, id end
        return id
    end

    -- Events after `after_id`, oldest first (the caller owns the task: checked by the route).
    function store.events_since(_, task_id, after_id, limit)
        local d, err = conn()
        if not d then return nil, err end
        local rows, qerr, code = d:query([[SELECT id, type, data, created_at FROM task_events
            WHERE task_id = ? AND id > ? ORDER BY id LIMIT ?]], task_id, after_id or 0, limit or 500)
        if not rows then return failure(qerr, code) end
        return rows
    end

    function store.task_status(_, id)
        local row, err = first("SELECT status, cancel_requested FROM tasks WHERE id = ?", id)
        if not row then return nil, err end
        return row.status, row.cancel_requested == 1
    end
end

return _M
