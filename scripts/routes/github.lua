-- POST /api/validate-token and POST /api/create-pr/<id>.
-- validate-token reads the token's permissions from the GitHub API; unlike the
-- original it has no side effects (it never creates a branch). create-pr applies
-- the task's stored patch exactly (git am on a fresh clone in a sandbox: deletions,
-- renames, modes and binary files included), pushes <PR_BRANCH_PREFIX><id> and
-- opens the pull request; a second call returns the existing one.
local host = require "host"
local chat = require "app.chat"
local config = require "app.config"
local errors = require "app.errors"
local git = require "app.git"
local github = require "app.github"
local sandbox_mod = require "app.sandbox"
local store = require "app.store"
local text = require "app.text"
local validate = require "app.validate"

local json = host.json
local null = json.null

local _M = {}

local function require_token(body)
    local token = validate.optional_string(body, "github_token", 1000)
    if not token or token == "" then errors.bad_request("github_token is required") end
    if token:find("[%s%c]") then errors.bad_request("github_token contains invalid characters") end
    return token
end

local function unavailable()
    errors.raise(502, "GitHub API is unavailable")
end

function _M.validate_token(req)
    local body = validate.body_object(req, "github_token is required")
    local token = require_token(body)
    local repo_url = validate.optional_string(body, "repo_url", 300)
    local parsed
    if repo_url and repo_url ~= "" then
        local why
        parsed, why = git.parse_repo_url(repo_url)
        if not parsed then errors.bad_request(why) end
    end
    local status, user = github.user(token)
    if not status then unavailable() end
    if status == 401 then errors.unauthorized("Token validation failed: " .. github.message(user)) end
    if status ~= 200 then errors.raise(502, "Token validation failed: GitHub answered " .. status) end
    local login = user.login
    local repo_info = json.object()
    if parsed then
        local rstatus, repo = github.repo(token, parsed.owner, parsed.repo)
        if not rstatus then unavailable() end
        if rstatus ~= 200 then
            return 403, { error = "Cannot access repository: " .. github.message(repo), user = login,
                request_id = req.request_id }
        end
        local perms = type(repo.permissions) == "table" and repo.permissions or {}
        local push = perms.push == true
        repo_info = {
            name = repo.full_name,
            private = repo.private == true,
            default_branch = repo.default_branch,
            permissions = {
                read = perms.pull ~= false, write = push, admin = perms.admin == true,
                read_branches = true, create_branches = push,
            },
        }
    end
    return 200, { status = "success", user = login, repo = repo_info,
        message = "Token is valid and has repository access" }
end

local function pr_response(task, pr_url, pr_number, branch)
    local n = type(task.changed_files) == "table" and #task.changed_files or 0
    return 200, { status = "success", pr_url = pr_url, pr_number = pr_number, branch = branch, files_updated = n }
end


-- Applies the patch on a fresh clone of the base branch and pushes the PR branch.
local function push_branch(task, token, branch)
    local sandbox, err = sandbox_mod.provider().create { task_id = task.id, user_id = task.user_id, purpose = "pr" }
    if not sandbox then errors.raise(503, "Cannot create a sandbox: " .. tostring(err)) end
    local ok, perr = pcall(function()
        local cloned, cerr = git.clone(sandbox, task.repo_url, task.target_branch, token, config.get().clone_timeout)
        if not cloned then errors.raise(502, cerr) end
        local applied, aerr = git.run(sandbox, { "am", "--3way", "--keep-cr" }, { stdin = task.git_patch })
        if not applied then
            errors.conflict("The changes no longer apply to " .. task.target_branch ..
                " (it has moved since the task ran): " .. aerr)
        end
        local res, xerr = sandbox:exec {
            argv = git.argv(sandbox, "push", "--force", "--", "origin", "HEAD:refs/heads/" .. branch),
            env = git.remote_env(sandbox, token), cwd = sandbox.repo_dir, network = true, timeout_s = 120,
        }
        if not res then errors.raise(503, xerr) end
        if res.code ~= 0 then
            local why = git.reason(res.stderr)
            if why:find("403") or why:lower():find("permission") or why:lower():find("denied")
                or why:lower():find("authentication") then
                errors.raise(403, "GitHub token cannot push to this repository: " .. why)
            end
            errors.raise(502, "git push failed: " .. why)
        end
    end)
    sandbox:destroy()
    if not ok then error(perr, 0) end
end

function _M.create_pr(req)
    local task, serr = store:get_task(req.user_id, req.params.id)
    if serr then errors.store_unavailable(serr) end
    if not task then errors.not_found("Task not found") end
    if task.status ~= "completed" then errors.bad_request("Task not completed yet") end
    if task.git_patch == nil or task.git_patch == null or task.git_patch == "" then
        errors.bad_request("No patch data available for this task")
    end
    local body = validate.body_object(req, "github_token is required")
    local token = require_token(body)
    local title = validate.optional_string(body, "title", 256)
    local pr_body = validate.optional_string(body, "body", 65536)
    local repo = git.parse_repo_url(task.repo_url)
    if not repo then errors.bad_request("The task's repository URL is no longer allowed") end
    local metadata = task.execution_metadata or {}
    if task.pr_url ~= nil and task.pr_url ~= null then
        -- The pull request exists. If a follow-up run changed the result since it
        -- was pushed, update its branch; never open a second one or delete anything.
        local committed = task.commit_hash ~= null and task.commit_hash or nil
        if metadata.pr_commit_hash ~= committed then
            push_branch(task, token, task.pr_branch)
            store:set_pr(req.user_id, task.id, { pr_branch = task.pr_branch, pr_number = task.pr_number,
                pr_url = task.pr_url, commit_hash = committed })
        end
        return pr_response(task, task.pr_url, task.pr_number, task.pr_branch)
    end
    local branch = config.get().pr_branch_prefix .. task.id

    local existing, fstatus = github.find_pr(token, repo.owner, repo.repo, branch)
    if fstatus == nil and not existing then unavailable() end
    if fstatus == 401 then errors.unauthorized("GitHub rejected the token") end
    if fstatus == 404 then errors.not_found("Repository not found or not accessible with this token") end
    if not existing then
        push_branch(task, token, branch)
        local prompt = chat.first_user(task)
        local status, pr = github.create_pr(token, repo.owner, repo.repo, {
            title = title or ("aicode: " .. text.valid_utf8(text.clip(prompt:match("^[^\n]*"), 60))),
            head = branch,
            base = task.target_branch,
            body = pr_body or ("Automated changes generated by aicode (" .. task.agent .. ").\n\nPrompt: " .. prompt),
        })
        if not status then unavailable() end
        if status == 422 then
            existing = github.find_pr(token, repo.owner, repo.repo, branch)
            if not existing then errors.raise(422, "GitHub refused the pull request: " .. github.message(pr)) end
        elseif status == 401 then
            errors.unauthorized("GitHub rejected the token")
        elseif status == 403 then
            errors.raise(403, "GitHub token lacks permission to open pull requests: " .. github.message(pr))
        elseif status ~= 201 then
            errors.raise(502, "GitHub could not create the pull request: " .. github.message(pr))
        else
            existing = pr
        end
    end
    store:set_pr(req.user_id, task.id, { pr_branch = branch, pr_number = existing.number, pr_url = existing.html_url,
        commit_hash = task.commit_hash })
    return pr_response(task, existing.html_url, existing.number, branch)
end

return _M
