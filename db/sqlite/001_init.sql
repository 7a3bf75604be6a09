-- aicode embedded schema (SQLite). Mirrors the original Supabase schema
-- (seed-contract §2): same tables, column names and meanings, so the Supabase
-- store can be swapped in without touching any route. Timestamps are ISO 8601 UTC
-- text ("2026-11-27T09:30:12.345Z"); JSON columns hold JSON text.

CREATE TABLE users (
    id              TEXT PRIMARY KEY,          -- Supabase auth user id (UUID)
    email           TEXT,
    full_name       TEXT,
    avatar_url      TEXT,
    github_username TEXT,
    github_token    TEXT,                      -- kept for schema parity; aicode never writes it
    preferences     TEXT NOT NULL DEFAULT '{}',
    is_test_user    INTEGER NOT NULL DEFAULT 0,
    expires_at      TEXT,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE projects (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    repo_url    TEXT NOT NULL,
    repo_name   TEXT NOT NULL,
    repo_owner  TEXT NOT NULL,
    name        TEXT NOT NULL,
    description TEXT,
    is_active   INTEGER NOT NULL DEFAULT 1,
    settings    TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (user_id, repo_url)
);

CREATE TABLE tasks (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id            TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    project_id         INTEGER REFERENCES projects(id) ON DELETE CASCADE,
    status             TEXT NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    agent              TEXT NOT NULL DEFAULT 'claude',
    repo_url           TEXT,
    target_branch      TEXT NOT NULL DEFAULT 'main',
    pr_branch          TEXT,
    container_id       TEXT,
    commit_hash        TEXT,
    pr_number          INTEGER,
    pr_url             TEXT,
    git_diff           TEXT,
    git_patch          TEXT,
    changed_files      TEXT NOT NULL DEFAULT '[]',
    error              TEXT,
    chat_messages      TEXT NOT NULL DEFAULT '[]',
    execution_metadata TEXT NOT NULL DEFAULT '{}',
    created_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    started_at         TEXT,
    completed_at       TEXT
);

CREATE INDEX idx_projects_user_id ON projects(user_id);
CREATE INDEX idx_tasks_user_id ON tasks(user_id);
CREATE INDEX idx_tasks_project_id ON tasks(project_id);
CREATE INDEX idx_tasks_status ON tasks(status);

-- updated_at follows every change unless the statement set it itself.
CREATE TRIGGER users_updated_at AFTER UPDATE ON users
WHEN NEW.updated_at = OLD.updated_at
BEGIN
    UPDATE users SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id;
END;

CREATE TRIGGER projects_updated_at AFTER UPDATE ON projects
WHEN NEW.updated_at = OLD.updated_at
BEGIN
    UPDATE projects SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id;
END;

CREATE TRIGGER tasks_updated_at AFTER UPDATE ON tasks
WHEN NEW.updated_at = OLD.updated_at
BEGIN
    UPDATE tasks SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id;
END;
