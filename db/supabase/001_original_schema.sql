-- 001: the original async-code schema (seed-contract §2: db/init_supabase.sql plus
-- db/add_test_user_support.sql), with the same tables, columns, enum, policies and
-- triggers, so the original frontend's direct reads keep working. Defects fixed:
--   * handle_new_user() inserts with ON CONFLICT (id) DO NOTHING, so a second insert
--     of the same user (the seed's test-user service inserted after the trigger had,
--     §7 #24) can no longer fail with a duplicate key;
--   * cleanup_expired_test_users() is valid SQL (the seed's `DELETE ... RETURNING
--     COUNT(*) INTO` is not) and callable by service_role only;
--   * SECURITY DEFINER functions pin their search_path and are not executable by
--     anon / authenticated unless they are meant to be.
--
-- Written to be idempotent (IF NOT EXISTS, CREATE OR REPLACE, DROP POLICY IF
-- EXISTS), so it also applies cleanly to a Supabase project that already ran the
-- seed's scripts: it then only adds what is missing and replaces the functions,
-- triggers and policies with the fixed versions. tools/migrate_pg.sh runs it in one
-- transaction and records it in public.schema_migrations.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                   WHERE t.typname = 'task_status' AND n.nspname = 'public') THEN
        CREATE TYPE public.task_status AS ENUM ('pending', 'running', 'completed', 'failed', 'cancelled');
    END IF;
END
$$;

-- ---------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS public.users (
    id              uuid REFERENCES auth.users(id) ON DELETE CASCADE PRIMARY KEY,
    email           text,
    full_name       text,
    avatar_url      text,
    github_username text,
    github_token    text,          -- kept for schema parity; never encrypted by the seed, never written by aicode
    preferences     jsonb DEFAULT '{}'::jsonb,
    created_at      timestamptz DEFAULT now(),
    updated_at      timestamptz DEFAULT now()
);
ALTER TABLE public.users ADD COLUMN IF NOT EXISTS is_test_user boolean DEFAULT false;
ALTER TABLE public.users ADD COLUMN IF NOT EXISTS expires_at timestamptz;

CREATE TABLE IF NOT EXISTS public.projects (
    id          bigserial PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES public.users(id) ON DELETE CASCADE,
    repo_url    text NOT NULL,
    repo_name   text NOT NULL,
    repo_owner  text NOT NULL,
    name        text NOT NULL,
    description text,
    is_active   boolean DEFAULT true,
    settings    jsonb DEFAULT '{}'::jsonb,
    created_at  timestamptz DEFAULT now(),
    updated_at  timestamptz DEFAULT now(),
    UNIQUE (user_id, repo_url)
);
ALTER TABLE public.projects ADD COLUMN IF NOT EXISTS is_test_data boolean DEFAULT false;

CREATE TABLE IF NOT EXISTS public.tasks (
    id                 bigserial PRIMARY KEY,
    user_id            uuid NOT NULL REFERENCES public.users(id) ON DELETE CASCADE,
    project_id         bigint REFERENCES public.projects(id) ON DELETE CASCADE,
    status             public.task_status DEFAULT 'pending',
    agent              text DEFAULT 'claude',
    repo_url           text,
    target_branch      text DEFAULT 'main',
    pr_branch          text,
    container_id       text,
    commit_hash        text,
    pr_number          integer,
    pr_url             text,
    git_diff           text,
    git_patch          text,
    changed_files      jsonb DEFAULT '[]'::jsonb,
    error              text,
    chat_messages      jsonb DEFAULT '[]'::jsonb,
    execution_metadata jsonb DEFAULT '{}'::jsonb,
    created_at         timestamptz DEFAULT now(),
    updated_at         timestamptz DEFAULT now(),
    started_at         timestamptz,
    completed_at       timestamptz
);
ALTER TABLE public.tasks ADD COLUMN IF NOT EXISTS is_test_data boolean DEFAULT false;

CREATE INDEX IF NOT EXISTS idx_projects_user_id ON public.projects(user_id);
CREATE INDEX IF NOT EXISTS idx_tasks_user_id ON public.tasks(user_id);
CREATE INDEX IF NOT EXISTS idx_tasks_project_id ON public.tasks(project_id);
CREATE INDEX IF NOT EXISTS idx_tasks_status ON public.tasks(status);
CREATE INDEX IF NOT EXISTS idx_users_test_user ON public.users(is_test_user) WHERE is_test_user = true;
CREATE INDEX IF NOT EXISTS idx_users_expires_at ON public.users(expires_at) WHERE expires_at IS NOT NULL;

-- Supabase grants these by default privileges; explicit so a project whose
-- defaults were tightened behaves the same. Row-level security decides the rows.
GRANT SELECT, INSERT, UPDATE, DELETE ON public.users, public.projects, public.tasks
    TO anon, authenticated, service_role;
GRANT USAGE, SELECT ON SEQUENCE public.projects_id_seq, public.tasks_id_seq
    TO anon, authenticated, service_role;

-- ---------------------------------------------------------------------------
-- updated_at triggers (BEFORE UPDATE, as in the seed)
-- ---------------------------------------------------------------------------
-- The seed overwrote updated_at unconditionally; this keeps a value the statement
-- set itself (as the SQLite store's triggers do) and otherwise stamps now().
CREATE OR REPLACE FUNCTION public.update_updated_at_column() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at = now();
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER update_users_updated_at BEFORE UPDATE ON public.users
    FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();
CREATE OR REPLACE TRIGGER update_projects_updated_at BEFORE UPDATE ON public.projects
    FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();
CREATE OR REPLACE TRIGGER update_tasks_updated_at BEFORE UPDATE ON public.tasks
    FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();

-- ---------------------------------------------------------------------------
-- auth.users -> public.users
-- ---------------------------------------------------------------------------
-- Fixed: ON CONFLICT DO NOTHING, so the profile row is created exactly once even if
-- something else (an admin script, a retried sign-up) inserted it first.
CREATE OR REPLACE FUNCTION public.handle_new_user() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $$
DECLARE
    test_user boolean := coalesce((NEW.raw_user_meta_data ->> 'is_test_user')::boolean, false);
BEGIN
    INSERT INTO public.users (id, email, full_name, avatar_url, is_test_user, expires_at)
    VALUES (
        NEW.id,
        NEW.email,
        NEW.raw_user_meta_data ->> 'full_name',
        NEW.raw_user_meta_data ->> 'avatar_url',
        test_user,
        CASE WHEN test_user
             THEN now() + interval '1 hour' * coalesce((NEW.raw_user_meta_data ->> 'ttl_hours')::integer, 1)
        END
    )
    ON CONFLICT (id) DO NOTHING;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION public.handle_user_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $$
BEGIN
    UPDATE public.users
       SET email = NEW.email,
           full_name = NEW.raw_user_meta_data ->> 'full_name',
           avatar_url = NEW.raw_user_meta_data ->> 'avatar_url',
           updated_at = now()
     WHERE id = NEW.id;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER on_auth_user_created AFTER INSERT ON auth.users
    FOR EACH ROW EXECUTE FUNCTION public.handle_new_user();
CREATE OR REPLACE TRIGGER on_auth_user_updated AFTER UPDATE ON auth.users
    FOR EACH ROW EXECUTE FUNCTION public.handle_user_update();

REVOKE ALL ON FUNCTION public.handle_new_user(), public.handle_user_update() FROM PUBLIC, anon, authenticated;

-- ---------------------------------------------------------------------------
-- Test users (add_test_user_support.sql)
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION public.is_test_user(user_id uuid) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM public.users u WHERE u.id = is_test_user.user_id AND u.is_test_user = true);
END
$$;
REVOKE ALL ON FUNCTION public.is_test_user(uuid) FROM PUBLIC, anon;
GRANT EXECUTE ON FUNCTION public.is_test_user(uuid) TO authenticated, service_role;

-- Fixed: the seed's version was invalid SQL. Deletes expired test users' profiles
-- (their projects and tasks cascade) and returns how many.
CREATE OR REPLACE FUNCTION public.cleanup_expired_test_users() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $$
DECLARE
    deleted_count integer;
BEGIN
    WITH gone AS (
        DELETE FROM public.users
         WHERE is_test_user = true AND expires_at IS NOT NULL AND expires_at < now()
        RETURNING 1
    )
    SELECT count(*) INTO deleted_count FROM gone;
    RETURN deleted_count;
END
$$;
REVOKE ALL ON FUNCTION public.cleanup_expired_test_users() FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.cleanup_expired_test_users() TO service_role;

-- Marks a user's existing data as test data when the user becomes a test user.
CREATE OR REPLACE FUNCTION public.mark_test_user_data() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $$
BEGIN
    IF NEW.is_test_user = true THEN
        UPDATE public.projects SET is_test_data = true WHERE user_id = NEW.id;
        UPDATE public.tasks SET is_test_data = true WHERE user_id = NEW.id;
    END IF;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION public.mark_test_user_data() FROM PUBLIC, anon, authenticated;

CREATE OR REPLACE TRIGGER mark_test_data_on_user_update
    AFTER UPDATE OF is_test_user ON public.users
    FOR EACH ROW WHEN (NEW.is_test_user = true)
    EXECUTE FUNCTION public.mark_test_user_data();

-- ---------------------------------------------------------------------------
-- Row-level security (the policies as add_test_user_support.sql left them)
-- ---------------------------------------------------------------------------
ALTER TABLE public.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.tasks ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS "Users can view own profile" ON public.users;
DROP POLICY IF EXISTS "Users can update own profile" ON public.users;
DROP POLICY IF EXISTS "Service role can insert test users" ON public.users;
DROP POLICY IF EXISTS "Service role can delete test users" ON public.users;

CREATE POLICY "Users can view own profile" ON public.users
    FOR SELECT USING (
        auth.uid() = id
        OR (is_test_user = true AND auth.jwt() ->> 'role' = 'service_role')
    );
CREATE POLICY "Users can update own profile" ON public.users
    FOR UPDATE USING (
        auth.uid() = id
        AND (is_test_user = false OR auth.jwt() ->> 'role' = 'service_role')
    );
CREATE POLICY "Service role can insert test users" ON public.users
    FOR INSERT WITH CHECK (auth.jwt() ->> 'role' = 'service_role' AND is_test_user = true);
CREATE POLICY "Service role can delete test users" ON public.users
    FOR DELETE USING (auth.jwt() ->> 'role' = 'service_role' AND is_test_user = true);

DROP POLICY IF EXISTS "Users can view own projects" ON public.projects;
DROP POLICY IF EXISTS "Users can insert own projects" ON public.projects;
DROP POLICY IF EXISTS "Users can update own projects" ON public.projects;
DROP POLICY IF EXISTS "Users can delete own projects" ON public.projects;

CREATE POLICY "Users can view own projects" ON public.projects
    FOR SELECT USING (
        auth.uid() = user_id
        AND (is_test_data = false
             OR EXISTS (SELECT 1 FROM public.users u WHERE u.id = auth.uid() AND u.is_test_user = true))
    );
CREATE POLICY "Users can insert own projects" ON public.projects
    FOR INSERT WITH CHECK (
        auth.uid() = user_id
        AND is_test_data = EXISTS (SELECT 1 FROM public.users u WHERE u.id = auth.uid() AND u.is_test_user = true)
    );
CREATE POLICY "Users can update own projects" ON public.projects
    FOR UPDATE USING (auth.uid() = user_id);
CREATE POLICY "Users can delete own projects" ON public.projects
    FOR DELETE USING (auth.uid() = user_id);

DROP POLICY IF EXISTS "Users can view own tasks" ON public.tasks;
DROP POLICY IF EXISTS "Users can insert own tasks" ON public.tasks;
DROP POLICY IF EXISTS "Users can update own tasks" ON public.tasks;
DROP POLICY IF EXISTS "Users can delete own tasks" ON public.tasks;

CREATE POLICY "Users can view own tasks" ON public.tasks
    FOR SELECT USING (
        auth.uid() = user_id
        AND (is_test_data = false
             OR EXISTS (SELECT 1 FROM public.users u WHERE u.id = auth.uid() AND u.is_test_user = true))
    );
CREATE POLICY "Users can insert own tasks" ON public.tasks
    FOR INSERT WITH CHECK (
        auth.uid() = user_id
        AND is_test_data = EXISTS (SELECT 1 FROM public.users u WHERE u.id = auth.uid() AND u.is_test_user = true)
    );
CREATE POLICY "Users can update own tasks" ON public.tasks
    FOR UPDATE USING (auth.uid() = user_id);
CREATE POLICY "Users can delete own tasks" ON public.tasks
    FOR DELETE USING (auth.uid() = user_id);
