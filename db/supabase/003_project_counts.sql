-- 003: projects with their task counts in one read, the shape GET /api/projects
-- returns (task_count, completed_tasks, active_tasks: the fields the original
-- frontend reads, seed-contract §7 #25), as the SQLite store computes them.
--
--   GET /rest/v1/projects_with_counts?user_id=eq.<uid>&order=created_at.desc,id.desc
--
-- security_invoker: the caller's row-level security applies to projects and tasks
-- (a user's JWT sees only their own rows, as with the tables themselves).

CREATE OR REPLACE VIEW public.projects_with_counts WITH (security_invoker = true) AS
SELECT p.*,
       (SELECT count(*) FROM public.tasks t WHERE t.project_id = p.id) AS task_count,
       (SELECT count(*) FROM public.tasks t WHERE t.project_id = p.id AND t.status = 'completed') AS completed_tasks,
       (SELECT count(*) FROM public.tasks t
         WHERE t.project_id = p.id AND t.status IN ('pending', 'running')) AS active_tasks
  FROM public.projects p;

CREATE INDEX IF NOT EXISTS idx_tasks_project_status ON public.tasks(project_id, status);

REVOKE ALL ON public.projects_with_counts FROM anon, authenticated, service_role;
GRANT SELECT ON public.projects_with_counts TO anon, authenticated, service_role;
