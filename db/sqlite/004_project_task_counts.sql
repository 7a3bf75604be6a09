-- Per-project task counts kept by triggers (issue #2 benchmark: GET /api/projects).
--
-- Every project in the API carries task_count (all its tasks), completed_tasks
-- (status 'completed') and active_tasks (status 'pending' or 'running'). They were
-- three correlated count(*) subqueries per listed project; now the triggers below
-- keep them in the project row, in the same transaction as the task change, and the
-- store reads them like any other column (lualib/app/store/sqlite.lua).
--
-- Where they live: three columns on `projects`, not a separate table keyed by
-- project id. Measured on the benchmark's 50 projects (the list query through
-- host_core's db:query, one thread, rows built in Lua): 105 µs with the subqueries,
-- 80 µs with a LEFT JOIN to a counts table, 75 µs with the columns. A counts table
-- costs a B-tree probe per listed project; the columns cost none. The columns'
-- risks, and how each is closed:
--   * Leaking into responses: the store selects the project columns by name (the
--     same list as the Supabase store), and these three are named exactly like the
--     three fields the API always returned. Nothing else is added to a row.
--   * Writable through the API: PUT /api/projects accepts only name, description,
--     repo_url, settings and is_active (validate.only_fields in the route, and the
--     store's UPDATABLE list builds the SET clause); POST inserts named columns.
--     Only the triggers in this file write the counts.
--   * updated_at: projects_updated_at (001) bumps updated_at after any UPDATE that
--     does not set it, so a count change would have moved the project's updated_at
--     (a visible change). It is recreated below to skip UPDATEs that change a kept
--     count: only these triggers change counts, and each of their UPDATEs changes at
--     least one (they fire only when a task enters, leaves or changes category), so
--     a task never touches its project's updated_at, and every other UPDATE behaves
--     exactly as before (no column list to keep in step with later migrations).
--
-- Invariants the triggers rely on:
--   * A task's project exists when the task row names it: every connection of ours
--     enforces foreign keys (host/src/l_sqlite.c, host/src/migrate.c), so a new
--     project has no tasks and starts at 0. Deleting a project deletes its tasks
--     (ON DELETE CASCADE); their DELETE triggers then update a row that is going
--     away (or already gone: zero rows), which is harmless.
--   * Tasks are never written with REPLACE conflict resolution: rows REPLACE deletes
--     fire no DELETE trigger unless recursive_triggers is on. (ON CONFLICT DO NOTHING
--     and DO UPDATE are fine: nothing happens, or the UPDATE triggers fire.)
--   * status is never NULL (NOT NULL CHECK in 001), so (status = 'x') is 0 or 1.
--
-- Applied in one transaction (host/src/migrate.c, BEGIN IMMEDIATE): no task can
-- change between the backfill and the creation of the triggers.

DROP TRIGGER projects_updated_at;

ALTER TABLE projects ADD COLUMN task_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE projects ADD COLUMN completed_tasks INTEGER NOT NULL DEFAULT 0;
ALTER TABLE projects ADD COLUMN active_tasks INTEGER NOT NULL DEFAULT 0;

-- Backfill the existing rows (before projects_updated_at exists again, so no
-- updated_at moves). Projects without tasks keep the default 0.
UPDATE projects SET
    task_count = (SELECT count(*) FROM tasks t WHERE t.project_id = projects.id),
    completed_tasks = (SELECT count(*) FROM tasks t
                       WHERE t.project_id = projects.id AND t.status = 'completed'),
    active_tasks = (SELECT count(*) FROM tasks t
                    WHERE t.project_id = projects.id AND t.status IN ('pending', 'running'))
WHERE id IN (SELECT project_id FROM tasks);

-- As in 001, except that an UPDATE changing a kept count is bookkeeping, not an
-- edit of the project.
CREATE TRIGGER projects_updated_at AFTER UPDATE ON projects
WHEN NEW.updated_at = OLD.updated_at
     AND NEW.task_count IS OLD.task_count
     AND NEW.completed_tasks IS OLD.completed_tasks
     AND NEW.active_tasks IS OLD.active_tasks
BEGIN
    UPDATE projects SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id;
END;

CREATE TRIGGER tasks_project_counts_insert AFTER INSERT ON tasks
WHEN NEW.project_id IS NOT NULL
BEGIN
    UPDATE projects SET
        task_count = task_count + 1,
        completed_tasks = completed_tasks + (NEW.status = 'completed'),
        active_tasks = active_tasks + (NEW.status IN ('pending', 'running'))
    WHERE id = NEW.project_id;
END;

CREATE TRIGGER tasks_project_counts_delete AFTER DELETE ON tasks
WHEN OLD.project_id IS NOT NULL
BEGIN
    UPDATE projects SET
        task_count = task_count - 1,
        completed_tasks = completed_tasks - (OLD.status = 'completed'),
        active_tasks = active_tasks - (OLD.status IN ('pending', 'running'))
    WHERE id = OLD.project_id;
END;

-- A status change within one project moves the task between categories (completed,
-- active, neither); pending <-> running and failed <-> cancelled change no count and
-- write nothing.
CREATE TRIGGER tasks_project_counts_status AFTER UPDATE OF status ON tasks
WHEN NEW.project_id IS NOT NULL AND OLD.project_id IS NEW.project_id
     AND ((OLD.status = 'completed') <> (NEW.status = 'completed')
          OR (OLD.status IN ('pending', 'running')) <> (NEW.status IN ('pending', 'running')))
BEGIN
    UPDATE projects SET
        completed_tasks = completed_tasks - (OLD.status = 'completed') + (NEW.status = 'completed'),
        active_tasks = active_tasks - (OLD.status IN ('pending', 'running'))
                                    + (NEW.status IN ('pending', 'running'))
    WHERE id = NEW.project_id;
END;

-- A task moved to another project (or to or from none), whatever its status did in
-- the same statement: it leaves the old project as it was and joins the new one as
-- it is. `id = NULL` matches no row.
CREATE TRIGGER tasks_project_counts_move AFTER UPDATE OF project_id ON tasks
WHEN OLD.project_id IS NOT NEW.project_id
BEGIN
    UPDATE projects SET
        task_count = task_count - 1,
        completed_tasks = completed_tasks - (OLD.status = 'completed'),
        active_tasks = active_tasks - (OLD.status IN ('pending', 'running'))
    WHERE id = OLD.project_id;
    UPDATE projects SET
        task_count = task_count + 1,
        completed_tasks = completed_tasks + (NEW.status = 'completed'),
        active_tasks = active_tasks + (NEW.status IN ('pending', 'running'))
    WHERE id = NEW.project_id;
END;
