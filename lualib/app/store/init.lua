-- The store: the one interface routes use for data. The embedded default is
-- SQLite (app.store.sqlite); another backend (Supabase over PostgREST) plugs in
-- here by implementing the same methods, without touching any route.
--
-- Conventions (lauxlib style): a method returns its result; an expected absence
-- returns nil (no second value); a failure returns nil, err (the driver's text, for
-- the log only); a uniqueness conflict returns nil, "conflict".
--
--   store:ping()                               -> true | nil, err
--   store:get_user(id)                         -> user | nil
--   store:ensure_user(id, {email=...})         -> user, created
--   store:list_projects(user_id)               -> {project...}
--   store:create_project(user_id, fields)      -> project | nil, "conflict"
--   store:get_project(user_id, id)             -> project | nil
--   store:update_project(user_id, id, fields)  -> project | nil | nil, "conflict"
--   store:delete_project(user_id, id)          -> true | false
--   store:list_project_tasks(user_id, id)      -> {task...}
-- Every method that takes a user_id scopes its query to that owner.
local config = require "app.config"

local backend = config.get().store

return require("app.store." .. backend)
