-- /api/projects: the original fields and GitHub URL rules (seed-contract §1.4),
-- owner-scoped (another user's project is a 404), no mass assignment on PUT,
-- a duplicate (user, repo_url) is a 409.
local errors = require "app.errors"
local github_url = require "app.github_url"
local store = require "app.store"
local validate = require "app.validate"

local _M = {}

local MAX_NAME, MAX_DESCRIPTION, MAX_URL = 200, 10000, 300

local check_store = errors.check_store

local function parse_repo(url)
    local owner, repo = github_url.parse(url)
    if not owner then errors.bad_request("Invalid GitHub URL format: " .. url:sub(1, MAX_URL)) end
    return owner, repo
end

function _M.list(req)
    local projects = check_store(store:list_projects(req.user_id))
    return 200, { status = "success", projects = projects }
end

function _M.create(req)
    local body = validate.body_object(req, "No data provided")
    if next(body) == nil then errors.bad_request("No data provided") end
    local name = validate.optional_string(body, "name", MAX_NAME)
    local repo_url = validate.optional_string(body, "repo_url", MAX_URL)
    if not name or name == "" or not repo_url or repo_url == "" then
        errors.bad_request("name and repo_url are required")
    end
    local fields = {
        name = name,
        repo_url = repo_url,
        description = validate.optional_string(body, "description", MAX_DESCRIPTION) or "",
        settings = validate.optional_object(body, "settings"),
        is_active = validate.optional_boolean(body, "is_active"),
    }
    fields.repo_owner, fields.repo_name = parse_repo(repo_url)
    local project, err = check_store(store:create_project(req.user_id, fields))
    if err == "conflict" then errors.conflict("A project for this repository already exists") end
    return 200, { status = "success", project = project }
end

local function find(req)
    local project = check_store(store:get_project(req.user_id, req.params.id))
    if not project then errors.not_found("Project not found") end
    return project
end

function _M.get(req)
    return 200, { status = "success", project = find(req) }
end

local UPDATABLE = { name = true, description = true, repo_url = true, settings = true, is_active = true }

function _M.update(req)
    local body = validate.body_object(req, "No data provided")
    if next(body) == nil then errors.bad_request("No data provided") end
    validate.only_fields(body, UPDATABLE)
    local fields = {
        name = validate.optional_string(body, "name", MAX_NAME),
        description = validate.optional_string(body, "description", MAX_DESCRIPTION),
        repo_url = validate.optional_string(body, "repo_url", MAX_URL),
        settings = validate.optional_object(body, "settings"),
        is_active = validate.optional_boolean(body, "is_active"),
    }
    if fields.name == "" then errors.bad_request("name must not be empty") end
    if fields.repo_url then fields.repo_owner, fields.repo_name = parse_repo(fields.repo_url) end
    local project, err = check_store(store:update_project(req.user_id, req.params.id, fields))
    if err == "conflict" then errors.conflict("A project for this repository already exists") end
    if not project then errors.not_found("Project not found") end
    return 200, { status = "success", project = project }
end

function _M.delete(req)
    local deleted, err = store:delete_project(req.user_id, req.params.id)
    if deleted == nil then errors.store_unavailable(err) end
    if not deleted then errors.not_found("Project not found") end
    return 200, { status = "success", message = "Project deleted successfully" }
end

function _M.tasks(req)
    find(req)
    local tasks = check_store(store:list_project_tasks(req.user_id, req.params.id))
    return 200, { status = "success", tasks = tasks }
end

return _M
