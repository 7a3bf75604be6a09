-- scripts/routes/github.lua called directly with request tables as app.server passes
-- them. GitHub answers from the fake host's http queue; the sandbox that create-pr
-- pushes from is a fake recording every command (the local provider needs
-- bubblewrap and host.process, which specs do not have).
local helper = require "support.helper"

local ALICE = "11111111-1111-4111-8111-111111111111"
local BOB = "22222222-2222-4222-8222-222222222222"
local REPO = "https://github.com/octo/hello"

describe("routes.github", function()
    local host, ctl, json, github, store, db

    before_each(function()
        host, ctl, store, db = helper.fresh_store({ { ALICE }, { BOB } })
        json = host.json
        github = require "routes.github"
    end)

    after_each(function()
        db:close()
        ctl:cleanup()
    end)

    local function req(user, t)
        t = t or {}
        return helper.with_body(helper.request({ method = "POST", user_id = user, params = t.params or {} }),
            t.body)
    end

    local call, rejects = helper.call, helper.rejects

    local function gh(status, body)
        ctl:queue_http({ status = status, body = type(body) == "string" and body or assert(json.encode(body)) })
    end

    describe("POST /api/validate-token", function()
        local function validate(body) return req(ALICE, { body = body }) end

        it("requires a token without whitespace", function()
            rejects(400, "github_token is required", github.validate_token, req(ALICE))
            rejects(400, "github_token is required", github.validate_token, validate({}))
            rejects(400, "github_token is required", github.validate_token, validate({ github_token = "" }))
            rejects(400, "github_token must be a string", github.validate_token, validate({ github_token = 1 }))
            rejects(400, "github_token contains invalid characters", github.validate_token,
                validate({ github_token = "a\tb" }))
            assert.are.same({}, ctl.http_calls)
        end)

        it("answers the user and {} for repo without repo_url; the token goes only in the header", function()
            gh(200, { login = "octocat" })
            local status, res = call(github.validate_token, validate({ github_token = "ghp_abc" }))
            assert.are.equal(200, status)
            assert.are.same({ status = "success", user = "octocat", repo = {},
                message = "Token is valid and has repository access" }, res)
            local sent = ctl.http_calls[1]
            assert.are.equal("GET", sent.method)
            assert.are.equal("https://api.github.com/user", sent.url)
            assert.are.equal("Bearer ghp_abc", sent.headers.Authorization)
        end)

        it("maps the repository permissions to the original's fields, with no side effects", function()
            gh(200, { login = "octocat" })
            gh(200, { full_name = "octo/hello", private = true, default_branch = "trunk",
                permissions = { pull = true, push = false, admin = false } })
            local _, res = call(github.validate_token, validate({ github_token = "t", repo_url = REPO .. ".git" }))
            assert.are.same({ name = "octo/hello", private = true, default_branch = "trunk", permissions = {
                read = true, write = false, admin = false, read_branches = true, create_branches = false } }, res.repo)
            assert.are.equal("https://api.github.com/repos/octo/hello", ctl.http_calls[2].url)
            assert.are.equal(2, #ctl.http_calls)
            for _, c in ipairs(ctl.http_calls) do assert.are.equal("GET", c.method) end
        end)

        it("answers 403 with the user when the repository is not accessible", function()
            gh(200, { login = "octocat" })
            gh(404, { message = "Not Found" })
            local status, res = github.validate_token(validate({ github_token = "t", repo_url = REPO }))
            assert.are.equal(403, status)
            assert.are.same({ error = "Cannot access repository: Not Found", user = "octocat",
                request_id = "spec-request-id" }, res)
        end)

        it("answers 401 for a token GitHub rejects, 502 when GitHub fails", function()
            gh(401, { message = "Bad credentials" })
            rejects(401, "Token validation failed: Bad credentials", github.validate_token,
                validate({ github_token = "t" }))
            gh(503, "<html>")
            rejects(502, "Token validation failed: GitHub answered 503", github.validate_token,
                validate({ github_token = "t" }))
            ctl:queue_http("timeout")
            rejects(502, "GitHub API is unavailable", github.validate_token, validate({ github_token = "t" }))
            gh(200, { login = "octocat" })
            ctl:queue_http("timeout")
            rejects(502, "GitHub API is unavailable", github.validate_token,
                validate({ github_token = "t", repo_url = REPO }))
        end)

        it("rejects a repo_url outside the allowed hosts", function()
            gh(200, { login = "octocat" })
            rejects(400, "repo_url host is not allowed (GIT_ALLOWED_HOSTS)", github.validate_token,
                validate({ github_token = "t", repo_url = "https://gitlab.com/o/r" }))
        end)
    end)

    describe("POST /api/create-pr/<id>", function()
        local sandbox_local, sandboxes

        -- A fake sandbox: every exec is recorded; `results` answers them by git subcommand.
        local function fake_provider(results)
            sandboxes = {}
            stub(sandbox_local, "create", function(opts)
                local sb = { id = "fake", repo_dir = "/workspace/repo", askpass = "/fake/askpass.sh", execs = {},
                    opts = opts }
                function sb.exec(self, o)
                    self.execs[#self.execs + 1] = o
                    local sub
                    for i, a in ipairs(o.argv) do
                        if a == "clone" or a == "am" or a == "push" then sub = a end
                        if sub then break end
                        if i > 20 then break end
                    end
                    local r = results and results[sub]
                    if type(r) == "function" then return r(o) end
                    -- a clone prints the commit it checked out (git.clone runs rev-parse after it)
                    local sha = sub == "clone" and (string.rep("a", 40) .. "\n") or ""
                    return r or { code = 0, stdout = sha, stderr = "" }
                end
                function sb.destroy(self) self.destroyed = true end
                sandboxes[#sandboxes + 1] = sb
                return sb
            end)
        end

        before_each(function()
            sandbox_local = require "app.sandbox.local"
        end)

        after_each(function()
            if type(sandbox_local.create) == "table" then sandbox_local.create:revert() end
        end)

        local function task(fields)
            local t = assert(store:create_task(ALICE, { prompt = "add a README", repo_url = REPO, branch = "main",
                agent = "shell", timestamp = "2026-01-01T00:00:00.000Z" }))
            local f = { status = "completed", git_patch = "From abc\n", changed_files = '["README.md","b"]' }
            for k, v in pairs(fields or {}) do f[k] = v end
            local sets, args = {}, {}
            for k, v in pairs(f) do
                sets[#sets + 1] = k .. " = ?"
                args[#args + 1] = v
            end
            args[#args + 1] = t.id
            assert(db:run("UPDATE tasks SET " .. table.concat(sets, ", ") .. " WHERE id = ?", table.unpack(args)))
            return t.id
        end

        local function pr(id, body, user)
            return req(user or ALICE, { params = { id = id }, body = body or { github_token = "ghp_t" } })
        end

        it("checks the task, its state and patch, then the token, in the original's order", function()
            rejects(404, "Task not found", github.create_pr, pr(999999))
            rejects(404, "Task not found", github.create_pr, pr(task(), nil, BOB))
            rejects(400, "Task not completed yet", github.create_pr, pr(task({ status = "running" }), {}))
            rejects(400, "No patch data available for this task", github.create_pr, pr(task({ git_patch = "" }), {}))
            local id = task()
            rejects(400, "github_token is required", github.create_pr, req(ALICE, { params = { id = id } }))
            rejects(400, "github_token is required", github.create_pr, pr(id, {}))
            rejects(400, "github_token contains invalid characters", github.create_pr, pr(id, { github_token = "a b" }))
            rejects(400, "title must be a string", github.create_pr, pr(id, { github_token = "t", title = 1 }))
            rejects(400, "body must be at most 65536 bytes", github.create_pr,
                pr(id, { github_token = "t", body = string.rep("x", 65537) }))
            assert.are.same({}, ctl.http_calls)
        end)

        it("answers a task's recorded PR again without calling GitHub", function()
            local id = task({ pr_branch = "aicode/9", pr_number = 9, pr_url = "https://github.com/octo/hello/pull/9" })
            local status, res = call(github.create_pr, pr(id))
            assert.are.equal(200, status)
            assert.are.same({ status = "success", pr_url = "https://github.com/octo/hello/pull/9", pr_number = 9,
                branch = "aicode/9", files_updated = 2 }, res)
            assert.are.same({}, ctl.http_calls)
        end)

        it("reuses an open PR from the task's branch and records it", function()
            local id = task()
            gh(200, { { number = 5, html_url = "https://github.com/octo/hello/pull/5" } })
            local _, res = call(github.create_pr, pr(id))
            assert.are.equal(5, res.pr_number)
            assert.are.equal("aicode/" .. id, res.branch)
            assert.matches("/repos/octo/hello/pulls%?state=open&head=octo:aicode/" .. id .. "$",
                ctl.http_calls[1].url)
            local t = store:get_task(ALICE, id)
            assert.are.same({ "aicode/" .. id, 5, "https://github.com/octo/hello/pull/5" },
                { t.pr_branch, t.pr_number, t.pr_url })
        end)

        it("maps GitHub's answers to the PR lookup", function()
            local id = task()
            gh(401, { message = "Bad credentials" })
            rejects(401, "GitHub rejected the token", github.create_pr, pr(id))
            gh(404, { message = "Not Found" })
            rejects(404, "Repository not found or not accessible with this token", github.create_pr, pr(id))
            ctl:queue_http("timeout")
            rejects(502, "GitHub API is unavailable", github.create_pr, pr(id))
        end)

        it("pushes the patch from a fresh clone and opens the PR with default title and body", function()
            local id = task()
            fake_provider()
            gh(200, json.array {})
            ctl:queue_http(function(c)
                local sent = json.decode(c.body)
                assert.are.same({ title = "aicode: add a README", head = "aicode/" .. id, base = "main",
                    body = "Automated changes generated by aicode (shell).\n\nPrompt: add a README" }, sent)
                return { status = 201, body = '{"number":12,"html_url":"https://github.com/octo/hello/pull/12"}' }
            end)
            local status, res = call(github.create_pr, pr(id))
            assert.are.equal(200, status)
            assert.are.same({ status = "success", pr_url = "https://github.com/octo/hello/pull/12", pr_number = 12,
                branch = "aicode/" .. id, files_updated = 2 }, res)
            local sb = sandboxes[1]
            assert.is_true(sb.destroyed)
            assert.are.equal(3, #sb.execs)
            local clone, am, push = sb.execs[1], sb.execs[2], sb.execs[3]
            assert.is_truthy(table.concat(clone.argv, " "):find("clone --branch main", 1, true))
            assert.are.equal("From abc\n", am.stdin)
            assert.are.equal("HEAD:refs/heads/aicode/" .. id, push.argv[#push.argv])
            -- The token travels only in the environment of clone and push.
            for _, e in ipairs(sb.execs) do
                assert.is_nil(table.concat(e.argv, " "):find("ghp_t", 1, true))
            end
            assert.are.equal("ghp_t", clone.env.GIT_TOKEN)
            assert.are.equal("ghp_t", push.env.GIT_TOKEN)
            assert.is_nil(am.env.GIT_TOKEN)
            assert.are.equal(12, store:get_task(ALICE, id).pr_number)
        end)

        it("uses the caller's title and body", function()
            local id = task()
            fake_provider()
            gh(200, json.array {})
            ctl:queue_http(function(c)
                local sent = json.decode(c.body)
                assert.are.same({ "T", "B" }, { sent.title, sent.body })
                return { status = 201, body = '{"number":1,"html_url":"u"}' }
            end)
            call(github.create_pr, pr(id, { github_token = "t", title = "T", body = "B" }))
        end)

        -- The default title is "aicode: " + the prompt's start; a multi-byte character must
        -- not be cut in half (the request body would not be valid UTF-8 JSON).
        it("cuts the default title on a UTF-8 character boundary", function()
            local id = task()
            assert(db:run("UPDATE tasks SET chat_messages = ? WHERE id = ?", assert(json.encode(json.array { {
                role = "user", content = "a" .. string.rep("é", 40), timestamp = "2026-01-01T00:00:00.000Z" } })), id))
            fake_provider()
            gh(200, json.array {})
            local sent
            ctl:queue_http(function(c)
                sent = c.body and json.decode(c.body)
                return { status = 201, body = '{"number":1,"html_url":"u"}' }
            end)
            call(github.create_pr, pr(id))
            assert.is_table(sent, "the pull request was requested without a body")
            assert.is_truthy(utf8.len(sent.title))
            assert.matches("^aicode: aé", sent.title)
        end)

        it("maps sandbox and git failures", function()
            local id = task()
            gh(200, json.array {})
            rejects(503, nil, github.create_pr, pr(id)) -- no host.process in specs: no sandbox
            fake_provider({ clone = { code = 128, stdout = "", stderr = "fatal: Remote branch main not found" } })
            gh(200, json.array {})
            rejects(502, "git clone failed: fatal: Remote branch main not found", github.create_pr, pr(id))
            assert.is_true(sandboxes[1].destroyed)
            fake_provider({ am = { code = 1, stdout = "", stderr = "error: patch failed: README.md:1" } })
            gh(200, json.array {})
            local err = rejects(409, nil, github.create_pr, pr(id))
            assert.matches("^The changes no longer apply to main", err.message)
            fake_provider({ push = { code = 128, stdout = "", stderr = "remote: Permission to octo/hello denied\n" ..
                "fatal: unable to access 'https://github.com/octo/hello/': The requested URL returned error: 403" } })
            gh(200, json.array {})
            err = rejects(403, nil, github.create_pr, pr(id))
            assert.matches("^GitHub token cannot push to this repository", err.message)
            assert.is_nil(err.message:find("https://", 1, true))
            fake_provider({ push = { code = 1, stdout = "", stderr = "fatal: the remote end hung up" } })
            gh(200, json.array {})
            rejects(502, "git push failed: fatal: the remote end hung up", github.create_pr, pr(id))
            fake_provider({ push = function() return nil, "exec failed" end })
            gh(200, json.array {})
            rejects(503, "exec failed", github.create_pr, pr(id))
        end)

        it("maps GitHub's answers to the PR creation", function()
            local id = task()
            fake_provider()
            gh(200, json.array {})
            gh(403, { message = "Resource not accessible by integration" })
            rejects(403, "GitHub token lacks permission to open pull requests: Resource not accessible by integration",
                github.create_pr, pr(id))
            gh(200, json.array {})
            gh(401, { message = "Bad credentials" })
            rejects(401, "GitHub rejected the token", github.create_pr, pr(id))
            gh(200, json.array {})
            gh(500, { message = "Server Error" })
            rejects(502, "GitHub could not create the pull request: Server Error", github.create_pr, pr(id))
            gh(200, json.array {})
            ctl:queue_http("timeout")
            rejects(502, "GitHub API is unavailable", github.create_pr, pr(id))
            -- 422 (e.g. a PR from the branch already exists): the open PR is answered.
            gh(200, json.array {})
            gh(422, { message = "Validation Failed", errors = { { message = "A pull request already exists" } } })
            gh(200, { { number = 3, html_url = "https://github.com/octo/hello/pull/3" } })
            local _, res = call(github.create_pr, pr(id))
            assert.are.equal(3, res.pr_number)
            id = task()
            gh(200, json.array {})
            gh(422, { message = "Validation Failed", errors = { { message = "No commits between main and x" } } })
            gh(200, json.array {})
            rejects(422, "GitHub refused the pull request: Validation Failed: No commits between main and x",
                github.create_pr, pr(id))
        end)

        -- Every other route turns a store failure into 503 "Database unavailable".
        it("answers 503 when the store fails, not 404", function()
            local id = task()
            stub(store, "get_task").returns(nil, "database is locked")
            local err = helper.catch(github.create_pr, pr(id))
            store.get_task:revert()
            assert.are.same({ 503, "Database unavailable" }, { err.status, err.message })
        end)
    end)
end)
