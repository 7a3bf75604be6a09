-- 002: the task engine (issue #3) on Postgres: a durable queue in public.tasks
-- (lease + heartbeat), idempotent submission, cancellation, follow-up runs, and the
-- stored event stream of each task. Same columns and the same semantics as
-- db/sqlite/002_task_engine.sql + lualib/app/store/sqlite_tasks.lua, with
-- Postgres types: lease_until / heartbeat_at are timestamptz (not epoch seconds)
-- and cancel_requested is boolean. All times come from the database clock
-- (now()), so hosts sharing the database need not agree on the time.
--
-- Functions callable through PostgREST /rpc (named JSON arguments), service_role only:
--   engine:        claim_next_task, heartbeat_task, finish_task_run, recover_expired_tasks
--   owner-scoped:  request_cancel_task, start_followup, append_chat_message (each takes
--                  user_id and acts only on that user's task)
--
-- Tasks are written by the backend only. The seed's policies let a user insert and
-- update their own tasks directly through the Supabase API; with the queue in this
-- table that would let anyone queue a task the engine then runs without the
-- backend's validation (repo_url, branch: seed-contract §7 #6), or reset its status
-- and attempts. So anon / authenticated keep SELECT (the original frontend reads
-- tasks directly, §5.1) and lose INSERT / UPDATE / DELETE; the policies stay as they
-- were, for a project that grants those back deliberately.

ALTER TABLE public.tasks ADD COLUMN IF NOT EXISTS lease_owner text;          -- host/engine holding the lease
ALTER TABLE public.tasks ADD COLUMN IF NOT EXISTS lease_until timestamptz;
ALTER TABLE public.tasks ADD COLUMN IF NOT EXISTS heartbeat_at timestamptz;
ALTER TABLE public.tasks ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0;
ALTER TABLE public.tasks ADD COLUMN IF NOT EXISTS cancel_requested boolean NOT NULL DEFAULT false;
ALTER TABLE public.tasks ADD COLUMN IF NOT EXISTS idempotency_key text;
-- runs completed (1 + follow-ups)
ALTER TABLE public.tasks ADD COLUMN IF NOT EXISTS run_count integer NOT NULL DEFAULT 0;
ALTER TABLE public.tasks ADD COLUMN IF NOT EXISTS workflow_version text;

-- A plain (not partial) unique constraint, so PostgREST can name it in
-- `on_conflict=user_id,idempotency_key` (ON CONFLICT cannot infer a partial index
-- without its predicate). NULL keys never conflict: tasks without a key are free.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'tasks_user_id_idempotency_key_key'
                   AND conrelid = 'public.tasks'::regclass) THEN
        ALTER TABLE public.tasks ADD CONSTRAINT tasks_user_id_idempotency_key_key
            UNIQUE (user_id, idempotency_key);
    END IF;
END
$$;

CREATE INDEX IF NOT EXISTS idx_tasks_queue ON public.tasks(status, id);
CREATE INDEX IF NOT EXISTS idx_tasks_running_user ON public.tasks(user_id) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS idx_tasks_lease ON public.tasks(lease_until) WHERE status = 'running';

REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON public.tasks FROM anon, authenticated;

-- ---------------------------------------------------------------------------
-- Stored task events (the SSE stream; id is the global order and the event id)
-- ---------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS public.task_events (
    id         bigserial PRIMARY KEY,
    task_id    bigint NOT NULL REFERENCES public.tasks(id) ON DELETE CASCADE,
    type       text NOT NULL,
    data       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_task_events_task ON public.task_events(task_id, id);

ALTER TABLE public.task_events ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "Users can view own task events" ON public.task_events;
CREATE POLICY "Users can view own task events" ON public.task_events
    FOR SELECT USING (
        EXISTS (SELECT 1 FROM public.tasks t WHERE t.id = task_events.task_id AND t.user_id = auth.uid())
    );
-- Only the engine (service_role) writes events; owners may read them.
REVOKE ALL ON public.task_events FROM anon, authenticated;
GRANT SELECT ON public.task_events TO anon, authenticated;
GRANT ALL ON public.task_events TO service_role;
GRANT USAGE, SELECT ON SEQUENCE public.task_events_id_seq TO service_role;
REVOKE ALL ON SEQUENCE public.task_events_id_seq FROM anon, authenticated;

-- ---------------------------------------------------------------------------
-- The queue
-- ---------------------------------------------------------------------------

-- Claims the oldest pending task (lowest id, not cancel-requested) whose owner has
-- fewer than max_per_user running tasks, if fewer than max_global tasks run in all;
-- marks it running with a lease of lease_seconds held by `owner`, attempts + 1,
-- started_at kept if already set, completed_at and error cleared.
-- Returns [] or [{id, user_id, attempts}].
-- Each pending task goes to exactly one caller: the row is locked FOR UPDATE SKIP
-- LOCKED, and claimers are serialised by a transaction-scoped advisory lock so the
-- two caps hold exactly across hosts (as SQLite's single writer guarantees).
CREATE OR REPLACE FUNCTION public.claim_next_task(owner text, lease_seconds integer,
                                                  max_global integer, max_per_user integer)
RETURNS TABLE (id bigint, user_id uuid, attempts integer)
LANGUAGE plpgsql VOLATILE SET search_path = public, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_id bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('aicode.claim_next_task'));
    IF (SELECT count(*) FROM public.tasks r WHERE r.status = 'running') >= claim_next_task.max_global THEN
        RETURN;
    END IF;
    SELECT t.id INTO v_id
      FROM public.tasks t
     WHERE t.status = 'pending' AND NOT t.cancel_requested
       AND (SELECT count(*) FROM public.tasks r
             WHERE r.status = 'running' AND r.user_id = t.user_id) < claim_next_task.max_per_user
     ORDER BY t.id
     LIMIT 1
       FOR UPDATE OF t SKIP LOCKED;
    IF v_id IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    UPDATE public.tasks t
       SET status = 'running',
           lease_owner = claim_next_task.owner,
           lease_until = now() + make_interval(secs => claim_next_task.lease_seconds),
           heartbeat_at = now(),
           attempts = t.attempts + 1,
           started_at = coalesce(t.started_at, now()),
           completed_at = NULL,
           error = NULL
     WHERE t.id = v_id
    RETURNING t.id, t.user_id, t.attempts;
END
$$;

-- Extends the lease. held = false when the lease was lost (another host took the
-- task over, or it ended); cancel_requested reports a pending cancel either way.
-- Returns {held, cancel_requested}.
CREATE OR REPLACE FUNCTION public.heartbeat_task(task_id bigint, owner text, lease_seconds integer,
                                                 OUT held boolean, OUT cancel_requested boolean)
LANGUAGE plpgsql VOLATILE SET search_path = public, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    UPDATE public.tasks t
       SET lease_until = now() + make_interval(secs => heartbeat_task.lease_seconds),
           heartbeat_at = now()
     WHERE t.id = heartbeat_task.task_id AND t.lease_owner = heartbeat_task.owner AND t.status = 'running';
    held := FOUND;
    SELECT t.cancel_requested INTO heartbeat_task.cancel_requested
      FROM public.tasks t WHERE t.id = heartbeat_task.task_id;
    heartbeat_task.cancel_requested := coalesce(heartbeat_task.cancel_requested, false);
END
$$;

-- Ends a run: status completed | failed | cancelled, completed_at = now(), lease
-- cleared, error set to the given value (NULL when omitted), cancel_requested
-- cleared, run_count + 1 when completed. The optional result fields are set only
-- when given (NULL / omitted = unchanged); assistant_message is appended to
-- chat_messages atomically. Only the lease holder of a running task can finish
-- it, so a run that lost its lease cannot overwrite. Returns true when it did.
CREATE OR REPLACE FUNCTION public.finish_task_run(
    task_id bigint, owner text, status text,
    error text DEFAULT NULL,
    commit_hash text DEFAULT NULL, git_diff text DEFAULT NULL, git_patch text DEFAULT NULL,
    container_id text DEFAULT NULL,
    changed_files jsonb DEFAULT NULL, execution_metadata jsonb DEFAULT NULL,
    assistant_message jsonb DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = public, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF finish_task_run.status IS NULL OR finish_task_run.status NOT IN ('completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'finish_task_run: status must be completed, failed or cancelled, not %',
            coalesce(finish_task_run.status, 'null')
            USING ERRCODE = 'P0001', HINT = 'Pass "status": "completed" | "failed" | "cancelled".';
    END IF;
    UPDATE public.tasks t
       SET status = finish_task_run.status::public.task_status,
           completed_at = now(),
           lease_owner = NULL,
           lease_until = NULL,
           error = finish_task_run.error,
           cancel_requested = false,
           run_count = t.run_count + CASE WHEN finish_task_run.status = 'completed' THEN 1 ELSE 0 END,
           commit_hash = coalesce(finish_task_run.commit_hash, t.commit_hash),
           git_diff = coalesce(finish_task_run.git_diff, t.git_diff),
           git_patch = coalesce(finish_task_run.git_patch, t.git_patch),
           container_id = coalesce(finish_task_run.container_id, t.container_id),
           changed_files = coalesce(finish_task_run.changed_files, t.changed_files),
           execution_metadata = coalesce(finish_task_run.execution_metadata, t.execution_metadata),
           chat_messages = CASE WHEN finish_task_run.assistant_message IS NULL THEN t.chat_messages
                                ELSE coalesce(t.chat_messages, '[]'::jsonb)
                                     || jsonb_build_array(finish_task_run.assistant_message) END
     WHERE t.id = finish_task_run.task_id AND t.lease_owner = finish_task_run.owner AND t.status = 'running';
    RETURN FOUND;
END
$$;

-- Leases that expired (their host died or hung): a cancel-requested task becomes
-- cancelled (error 'Cancelled'); a task with attempts < max_attempts is re-queued
-- (pending, lease cleared, error and completed_at untouched); any other fails with
-- the interruption message. Returns [{id, action: "requeued"|"failed"|"cancelled",
-- container_id}] so the caller can reap the sandboxes.
CREATE OR REPLACE FUNCTION public.recover_expired_tasks(max_attempts integer)
RETURNS TABLE (id bigint, action text, container_id text)
LANGUAGE plpgsql VOLATILE SET search_path = public, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH expired AS (
        SELECT e.id FROM public.tasks e
         WHERE e.status = 'running' AND e.lease_until IS NOT NULL AND e.lease_until < now()
         ORDER BY e.id
           FOR UPDATE SKIP LOCKED
    )
    UPDATE public.tasks t
       SET status = CASE WHEN t.cancel_requested THEN 'cancelled'
                         WHEN t.attempts < recover_expired_tasks.max_attempts THEN 'pending'
                         ELSE 'failed' END::public.task_status,
           completed_at = CASE WHEN t.cancel_requested OR t.attempts >= recover_expired_tasks.max_attempts
                               THEN now() ELSE t.completed_at END,
           error = CASE WHEN t.cancel_requested THEN 'Cancelled'
                        WHEN t.attempts < recover_expired_tasks.max_attempts THEN t.error
                        ELSE 'The task was interrupted (the server running it stopped) and was not retried again'
                   END,
           lease_owner = NULL,
           lease_until = NULL,
           cancel_requested = false
      FROM expired
     WHERE t.id = expired.id
    RETURNING t.id,
              CASE t.status WHEN 'pending' THEN 'requeued' WHEN 'cancelled' THEN 'cancelled' ELSE 'failed' END,
              t.container_id;
END
$$;

-- Cancel: a pending task is cancelled at once ('cancelled'); a running one is
-- flagged and its runner stops it ('cancelling'); an ended one is left alone
-- ('finished'). NULL when the user owns no such task.
CREATE OR REPLACE FUNCTION public.request_cancel_task(user_id uuid, task_id bigint)
RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = public, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_status public.task_status;
BEGIN
    SELECT t.status INTO v_status FROM public.tasks t
     WHERE t.id = request_cancel_task.task_id AND t.user_id = request_cancel_task.user_id
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_status = 'pending' THEN
        UPDATE public.tasks t SET status = 'cancelled', completed_at = now(), error = 'Cancelled'
         WHERE t.id = request_cancel_task.task_id;
        RETURN 'cancelled';
    ELSIF v_status = 'running' THEN
        UPDATE public.tasks t SET cancel_requested = true WHERE t.id = request_cancel_task.task_id;
        RETURN 'cancelling';
    END IF;
    RETURN 'finished';
END
$$;

-- A follow-up run: appends the user's message to chat_messages and re-queues a
-- finished (completed / failed / cancelled) task: pending, error and completed_at
-- cleared, attempts reset. Returns [task row]; [] when the task is still pending
-- or running or the user owns no such task (tell them apart with a GET).
CREATE OR REPLACE FUNCTION public.start_followup(user_id uuid, task_id bigint, message jsonb)
RETURNS SETOF public.tasks
LANGUAGE plpgsql VOLATILE SET search_path = public, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    UPDATE public.tasks t
       SET status = 'pending', error = NULL, completed_at = NULL, attempts = 0, cancel_requested = false,
           chat_messages = coalesce(t.chat_messages, '[]'::jsonb) || jsonb_build_array(start_followup.message)
     WHERE t.id = start_followup.task_id AND t.user_id = start_followup.user_id
       AND t.status IN ('completed', 'failed', 'cancelled')
    RETURNING t.*;
END
$$;

-- Appends one message to chat_messages in a single statement (no lost updates
-- between concurrent writers, seed defect §7 #20). Returns the new number of
-- messages, or NULL when the user owns no such task.
CREATE OR REPLACE FUNCTION public.append_chat_message(user_id uuid, task_id bigint, message jsonb)
RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = public, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    n integer;
BEGIN
    UPDATE public.tasks t
       SET chat_messages = coalesce(t.chat_messages, '[]'::jsonb) || jsonb_build_array(append_chat_message.message)
     WHERE t.id = append_chat_message.task_id AND t.user_id = append_chat_message.user_id
    RETURNING jsonb_array_length(t.chat_messages) INTO n;
    RETURN n;
END
$$;

-- Engine functions: service_role only (Supabase's default privileges would let
-- anon and authenticated call them through /rpc otherwise).
REVOKE ALL ON FUNCTION public.claim_next_task(text, integer, integer, integer),
                       public.heartbeat_task(bigint, text, integer),
                       public.finish_task_run(bigint, text, text, text, text, text, text, text, jsonb, jsonb, jsonb),
                       public.recover_expired_tasks(integer)
    FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.claim_next_task(text, integer, integer, integer),
                          public.heartbeat_task(bigint, text, integer),
                          public.finish_task_run(bigint, text, text, text, text, text, text, text, jsonb, jsonb, jsonb),
                          public.recover_expired_tasks(integer)
    TO service_role;

-- Owner-scoped functions: the backend calls them with the caller's user_id.
REVOKE ALL ON FUNCTION public.request_cancel_task(uuid, bigint),
                       public.start_followup(uuid, bigint, jsonb),
                       public.append_chat_message(uuid, bigint, jsonb)
    FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.request_cancel_task(uuid, bigint),
                          public.start_followup(uuid, bigint, jsonb),
                          public.append_chat_message(uuid, bigint, jsonb)
    TO service_role;
