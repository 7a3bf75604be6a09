-- Task engine (issue #3): a durable queue in the tasks table (lease + heartbeat),
-- idempotent submission, cancellation, and the stored event stream of each task.

ALTER TABLE tasks ADD COLUMN lease_owner TEXT;          -- host/engine holding the lease
ALTER TABLE tasks ADD COLUMN lease_until REAL;          -- unix epoch seconds
ALTER TABLE tasks ADD COLUMN heartbeat_at REAL;
ALTER TABLE tasks ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN idempotency_key TEXT;
ALTER TABLE tasks ADD COLUMN run_count INTEGER NOT NULL DEFAULT 0;  -- runs completed (1 + follow-ups)
ALTER TABLE tasks ADD COLUMN workflow_version TEXT;

CREATE UNIQUE INDEX idx_tasks_idempotency ON tasks(user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX idx_tasks_queue ON tasks(status, id);

CREATE TABLE task_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- global order; the SSE event id
    task_id    INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    type       TEXT NOT NULL,
    data       TEXT NOT NULL DEFAULT '{}',         -- JSON
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX idx_task_events_task ON task_events(task_id, id);
