-- ============================================================================
-- 000_supabase_shim.sql: TEST-ONLY. NEVER APPLY THIS TO A SUPABASE PROJECT.
-- ============================================================================
-- A Supabase project already has everything below (made by Supabase itself):
-- the roles anon / authenticated / service_role / authenticator, the `auth`
-- schema with auth.users, and auth.uid() / auth.role() / auth.jwt() / auth.email().
-- A plain PostgreSQL (the throwaway test cluster of tools/pg.sh) has none of
-- them, and the migrations 001+ need them. This file creates minimal stand-ins,
-- with the same names and the same behaviour as far as our schema uses them:
--   * service_role has BYPASSRLS, as in Supabase;
--   * auth.uid() reads the `sub` claim of the `request.jwt.claims` setting that
--     PostgREST (or tests/fakes/postgrest.py) sets for each request;
--   * default privileges grant the API roles access to new objects in `public`,
--     as Supabase does (row-level security then decides which rows).
--
-- tools/migrate_pg.sh applies it only when the database has no `auth` schema
-- (--shim auto, the default), and the guard below refuses to run on a database
-- that has Supabase's own admin roles.

DO $guard$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname IN ('supabase_admin', 'supabase_auth_admin')) THEN
        RAISE EXCEPTION '000_supabase_shim.sql is for plain PostgreSQL test databases only; '
            'this database has Supabase''s admin roles, so it is a Supabase project: skip this file '
            '(tools/migrate_pg.sh --shim no)';
    END IF;
END
$guard$;

-- Roles (cluster-wide; created only when missing).
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticator') THEN
        CREATE ROLE authenticator LOGIN NOINHERIT;
    END IF;
END
$roles$;

-- PostgREST logs in as authenticator and switches to the JWT's role.
GRANT anon, authenticated, service_role TO authenticator;

CREATE SCHEMA IF NOT EXISTS auth;

-- The columns of Supabase's auth.users that anything here reads (GoTrue owns the
-- real table; handle_new_user() in 001 reads id, email, raw_user_meta_data).
CREATE TABLE IF NOT EXISTS auth.users (
    instance_id        uuid,
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    aud                varchar(255) DEFAULT 'authenticated',
    role               varchar(255) DEFAULT 'authenticated',
    email              varchar(255),
    encrypted_password varchar(255),
    email_confirmed_at timestamptz,
    last_sign_in_at    timestamptz,
    raw_app_meta_data  jsonb DEFAULT '{}'::jsonb,
    raw_user_meta_data jsonb DEFAULT '{}'::jsonb,
    is_super_admin     boolean,
    is_anonymous       boolean NOT NULL DEFAULT false,
    phone              text,
    created_at         timestamptz DEFAULT now(),
    updated_at         timestamptz DEFAULT now()
);

-- Supabase's definitions: the legacy per-claim setting first, then the claims JSON.
CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid
LANGUAGE sql STABLE
AS $$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
    )::uuid
$$;

CREATE OR REPLACE FUNCTION auth.role() RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claim.role', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
    )::text
$$;

CREATE OR REPLACE FUNCTION auth.email() RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claim.email', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
    )::text
$$;

CREATE OR REPLACE FUNCTION auth.jwt() RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claim', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')
    )::jsonb
$$;

GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION auth.uid(), auth.role(), auth.email(), auth.jwt()
    TO anon, authenticated, service_role;
GRANT ALL ON auth.users TO service_role;

-- Supabase's default privileges on `public` for objects the migrating role creates.
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
