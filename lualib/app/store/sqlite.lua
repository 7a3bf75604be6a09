-- SQLite store (embedded default). One connection per VM, i.e. per worker
-- thread; WAL lets the workers read concurrently. Queries are short, indexed
-- and bounded by the busy timeout, so they run inline on the loop thread.
local host = require "host"

local json, sqlite = host.json, host.sqlite
local null = json.null

local _M = {}

local DB_PATH = host.info.data_dir .. "/aicode.db"

local db, open_err = sqlite.open(DB_PATH, { busy_timeout_ms = 5000 })

local function conn()
    if not db then return nil, "cannot open database: " .. tostring(open_err) end
    return db
end

local function decode_json_column(row, field, default_json)
    local v = row[field]
    if v == nil or v == null then
        v = default_json
    end
    -- The usual values, without a trip through the parser: json.decode("{}") is a new
    -- empty table marked as an object, which is what json.object() returns.
    if v == "{}" then
        row[field] = json.object()
        return
    elseif v == "[]" then
        row[field] = json.array()
        return
    end
    local decoded, err = json.decode(v)
    if decoded == nil then
        -- Never silently: a column that does not decode is a bug upstream of here.
        host.log("error", "store: undecodable JSON column", { field = field, error = tostring(err) })
        decoded = json.decode(default_json)
    end
    row[field] = decoded
end

local function to_bool(row, field)
    local v = row[field]
    if v ~= nil and v ~= null then row[field] = v ~= 0 end
end

local function project_row(row)
    decode_json_column(row, "settings", "{}")
    to_bool(row, "is_active")
    return row
end

local function task_row(row)
    decode_json_column(row, "changed_files", "[]")
    decode_json_column(row, "chat_messages", "[]")
    decode_json_column(row, "execution_metadata", "{}")
    return row
end

local function failure(err, code)
    if code == "unique" then return nil, "conflict" end
    return nil, err or "database error"
end

function _M.ping()
    local d, err = conn()
    if not d then return nil, err end
    -- Take the write lock briefly: a database that another process holds locked
    -- (or that vanished) is reported as down rather than hanging callers.
    local prev = d:busy_timeout(200)
    local ok, berr, code = d:begin()
    if ok then d:rollback() end
    d:busy_timeout(prev)
    if not ok then return failure(berr, code) end
    return true
end

function _M.get_user(_, id)
    local d, err = conn()
    if not d then return nil, err end
    local row, qerr, code = d:first("SELECT * FROM users WHERE id = ?", id)
    if qerr then return failure(qerr, code) end
    return row
end

function _M.ensure_user(self, id, attrs)
    local d, err = conn()
    if not d then return nil, err end
    local changes, ierr, code = d:run("INSERT INTO users (id, email) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
        id, attrs and attrs.email or null)
    if not changes then return failure(ierr, code) end
    local row, gerr = self:get_user(id)
    if not row then return nil, gerr or "user vanished" end
    return row, changes > 0
end

-- A project as the API shows it: the original schema's columns (the same list as
-- the Supabase store) and the three task counts, which triggers keep in the row
-- (db/sqlite/004_project_task_counts.sql). Named, not p.*, so a column added to the
-- table later never reaches a response by accident.
local PROJECT_COLUMNS = "p.id, p.user_id, p.repo_url, p.repo_name, p.repo_owner, p.name, p.description, " ..
    "p.is_active, p.settings, p.created_at, p.updated_at, p.task_count, p.completed_tasks, p.active_tasks"

-- Built once: the statement cache finds a constant string by its address. The
-- ORDER BY follows idx_projects_user_created (db/sqlite/003_indexes.sql), so the
-- list is one walk of that index plus a rowid lookup per project, and no sort.
local LIST_PROJECTS_SQL = "SELECT " .. PROJECT_COLUMNS ..
    " FROM projects p WHERE p.user_id = ? ORDER BY p.created_at DESC, p.id DESC"
local GET_PROJECT_SQL = "SELECT " .. PROJECT_COLUMNS .. " FROM projects p WHERE p.id = ? AND p.user_id = ?"

function _M.list_projects(_, user_id)
    local d, err = conn()
    if not d then return nil, err end
    local rows, qerr, code = d:query(LIST_PROJECTS_SQL, user_id)
    if not rows then return failure(qerr, code) end
    for i = 1, #rows do project_row(rows[i]) end
    return json.array(rows)
end

function _M.get_project(_, user_id, id)
    local d, err = conn()
    if not d then return nil, err end
    local row, qerr, code = d:first(GET_PROJECT_SQL, id, user_id)
    if qerr then return failure(qerr, code) end
    return row and project_row(row)
end

function _M.create_project(self, user_id, f)
    local d, err = conn()
    if not d then return nil, err end
    local settings = json.encode(f.settings or json.object())
    local _, id_or_err, code = d:run([[INSERT INTO projects
        (user_id, repo_url, repo_name, repo_owner, name, description, is_active, settings)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?)]],
        user_id, f.repo_url, f.repo_name, f.repo_owner, f.name, f.description or "",
        f.is_active == false and 0 or 1, settings)
    if code then return failure(id_or_err, code) end
    return self:get_project(user_id, id_or_err)
end

local UPDATABLE = { "name", "description", "repo_url", "repo_name", "repo_owner", "settings", "is_active" }

function _M.update_project(self, user_id, id, f)
    local d, err = conn()
    if not d then return nil, err end
    local sets, args = {}, {}
    for _, col in ipairs(UPDATABLE) do
        local v = f[col]
        if v ~= nil then
            if col == "settings" then v = json.encode(v) end
            if col == "is_active" then v = v and 1 or 0 end
            sets[#sets + 1] = col .. " = ?"
            args[#args + 1] = v
        end
    end
    sets[#sets + 1] = "updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
    args[#args + 1] = id
    args[#args + 1] = user_id
    local changes, uerr, code = d:run("UPDATE projects SET " .. table.concat(sets, ", ") ..
        " WHERE id = ? AND user_id = ?", table.unpack(args))
    if not changes then return failure(uerr, code) end
    if changes == 0 then return nil end
    return self:get_project(user_id, id)
end

function _M.delete_project(_, user_id, id)
    local d, err = conn()
    if not d then return nil, err end
    local changes, derr, code = d:run("DELETE FROM projects WHERE id = ? AND user_id = ?", id, user_id)
    if not changes then return failure(derr, code) end
    return changes > 0
end

-- The task row as the API shows it: the original schema's columns (seed-contract
-- §2.3), not the engine's bookkeeping (lease, attempts, idempotency key).
local TASK_COLUMNS = [[id, user_id, project_id, status, agent, repo_url, target_branch, pr_branch,
    container_id, commit_hash, pr_number, pr_url, git_diff, git_patch, changed_files, error,
    chat_messages, execution_metadata, created_at, updated_at, started_at, completed_at]]
_M.TASK_COLUMNS = TASK_COLUMNS

function _M.list_project_tasks(_, user_id, project_id)
    local d, err = conn()
    if not d then return nil, err end
    local rows, qerr, code = d:query("SELECT " .. TASK_COLUMNS ..
        " FROM tasks WHERE project_id = ? AND user_id = ? ORDER BY created_at DESC, id DESC",
        project_id, user_id)
    if not rows then return failure(qerr, code) end
    for i = 1, #rows do task_row(rows[i]) end
    return json.array(rows)
end

-- Tasks, the queue and task events live in their own module; they share this
-- connection and these row helpers.
require("app.store.sqlite_tasks").install(_M, {
    conn = conn, failure = failure, task_row = task_row, columns = TASK_COLUMNS,
})

return _M
