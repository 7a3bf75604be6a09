-- Indexes for the hot read paths (issue #2 benchmark).
--
-- GET /api/projects lists a user's projects newest first: with this index SQLite
-- reads them in order instead of sorting them in a temporary B-tree. It starts with
-- user_id, so it also serves every lookup idx_projects_user_id served.
CREATE INDEX idx_projects_user_created ON projects(user_id, created_at DESC, id DESC);
DROP INDEX idx_projects_user_id;

-- The per-project task counts (all, completed, pending + running) become lookups in
-- this index alone, without reading task rows. It starts with project_id, so it also
-- serves every lookup idx_tasks_project_id served (including ON DELETE CASCADE).
CREATE INDEX idx_tasks_project_status ON tasks(project_id, status);
DROP INDEX idx_tasks_project_id;
