-- scripts/routes/projects.lua called directly with request tables as app.server
-- passes them (user_id set by auth, params from the router, json the decoded body).
local helper = require "support.helper"

local ALICE = "11111111-1111-4111-8111-111111111111"
local BOB = "22222222-2222-4222-8222-222222222222"
local REPO = "https://github.com/octo/hello"

describe("routes.projects", function()
    local host, ctl, json, projects, store

    before_each(function()
        host, ctl = helper.fresh_host()
        json = host.json
        projects = require "routes.projects"
        store = require "app.store"
        assert(store:ensure_user(ALICE, {}))
        assert(store:ensure_user(BOB, {}))
    end)

    after_each(function() ctl:cleanup() end)

    -- A request whose body went through host.json like a real one.
    local function req(user, t)
        t = t or {}
        return helper.with_body(helper.request({ method = t.method or "GET", user_id = user,
            params = t.params or {} }), t.body)
    end

    local call, rejects = helper.call, helper.rejects

    local function create(user, body)
        local status, res = call(projects.create, req(user, { method = "POST", body = body or {
            name = "Hello", repo_url = REPO } }))
        assert.are.equal(200, status)
        return res.project
    end

    describe("GET /api/projects", function()
        it("answers an empty list as []", function()
            local status, body, text = call(projects.list, req(ALICE))
            assert.are.equal(200, status)
            assert.are.equal("success", body.status)
            assert.are.equal('{"projects":[],"status":"success"}', text)
        end)

        it("lists only the caller's projects", function()
            create(ALICE)
            create(BOB, { name = "Bob's", repo_url = "https://github.com/bob/repo" })
            local _, body = call(projects.list, req(ALICE))
            assert.are.equal(1, #body.projects)
            assert.are.equal(ALICE, body.projects[1].user_id)
        end)

        it("answers 503 when the store fails, without the driver's text", function()
            stub(store, "list_projects").returns(nil, "database is locked")
            rejects(503, "Database unavailable", projects.list, req(ALICE))
            store.list_projects:revert()
        end)
    end)

    describe("POST /api/projects", function()
        it("creates a project with the original fields and JSON types", function()
            local status, body = call(projects.create, req(ALICE, { method = "POST", body = {
                name = "Hello", repo_url = REPO .. ".git", description = "greetings", settings = { x = 1 } } }))
            assert.are.equal(200, status)
            assert.are.equal("success", body.status)
            local p = body.project
            assert.are.equal("integer", math.type(p.id))
            assert.are.equal(ALICE, p.user_id)
            assert.are.equal(REPO .. ".git", p.repo_url) -- stored as given
            assert.are.equal("octo", p.repo_owner)
            assert.are.equal("hello", p.repo_name)
            assert.are.equal("Hello", p.name)
            assert.are.equal("greetings", p.description)
            assert.is_true(p.is_active)
            assert.are.equal(1, p.settings.x)
            assert.is_string(p.created_at)
            assert.is_string(p.updated_at)
        end)

        it("defaults description to \"\" and settings to {}", function()
            local _, _, text = call(projects.create, req(ALICE, { method = "POST", body = {
                name = "Hello", repo_url = REPO } }))
            assert.matches('"description":""', text, 1, true)
            assert.matches('"settings":{}', text, 1, true)
        end)

        it("accepts is_active = false", function()
            local p = create(ALICE, { name = "x", repo_url = REPO, is_active = false })
            assert.is_false(p.is_active)
        end)

        it("400 No data provided for a missing, empty or non-object body", function()
            rejects(400, "No data provided", projects.create, req(ALICE, { method = "POST" }))
            rejects(400, "No data provided", projects.create, req(ALICE, { method = "POST", body = "{}" }))
            rejects(400, "No data provided", projects.create, req(ALICE, { method = "POST", body = "[]" }))
            rejects(400, "No data provided", projects.create, req(ALICE, { method = "POST", body = '"x"' }))
        end)

        it("400 name and repo_url are required", function()
            for _, body in ipairs({
                { name = "x" }, { repo_url = REPO }, { name = "", repo_url = REPO }, { name = "x", repo_url = "" },
                { description = "only" },
            }) do
                rejects(400, "name and repo_url are required", projects.create,
                    req(ALICE, { method = "POST", body = body }))
            end
        end)

        it("400 for wrong types and oversized fields", function()
            rejects(400, "name must be a string", projects.create,
                req(ALICE, { method = "POST", body = { name = 1, repo_url = REPO } }))
            rejects(400, "repo_url must be a string", projects.create,
                req(ALICE, { method = "POST", body = { name = "x", repo_url = { REPO } } }))
            rejects(400, "settings must be an object", projects.create,
                req(ALICE, { method = "POST", body = '{"name":"x","repo_url":"' .. REPO .. '","settings":[]}' }))
            rejects(400, "is_active must be a boolean", projects.create,
                req(ALICE, { method = "POST", body = { name = "x", repo_url = REPO, is_active = "yes" } }))
            rejects(400, "name must be at most 200 bytes", projects.create,
                req(ALICE, { method = "POST", body = { name = ("n"):rep(201), repo_url = REPO } }))
            rejects(400, "description must be at most 10000 bytes", projects.create,
                req(ALICE, { method = "POST", body = { name = "x", repo_url = REPO, description = ("d"):rep(10001) } }))
        end)

        it("400 Invalid GitHub URL format: <url>", function()
            for _, url in ipairs({ "http://github.com/o/r", "https://www.github.com/o/r",
                "https://github.com/o/r/tree/x", "not a url" }) do
                rejects(400, "Invalid GitHub URL format: " .. url, projects.create,
                    req(ALICE, { method = "POST", body = { name = "x", repo_url = url } }))
            end
        end)

        it("409 for a duplicate (user, repo_url), but not across users", function()
            create(ALICE)
            rejects(409, "A project for this repository already exists", projects.create,
                req(ALICE, { method = "POST", body = { name = "again", repo_url = REPO } }))
            assert.are.equal(BOB, create(BOB).user_id)
        end)

        it("ignores server-owned fields in the body", function()
            local p = create(ALICE, { name = "x", repo_url = REPO, user_id = BOB, id = 999, created_at = "1999" })
            assert.are.equal(ALICE, p.user_id)
            assert.are_not.equal(999, p.id)
            assert.are_not.equal("1999", p.created_at)
        end)
    end)

    describe("GET /api/projects/<int:id>", function()
        it("returns the caller's project", function()
            local p = create(ALICE)
            local status, body = call(projects.get, req(ALICE, { params = { id = p.id } }))
            assert.are.equal(200, status)
            assert.are.equal("success", body.status)
            assert.are.equal(p.id, body.project.id)
            assert.are.equal(0, body.project.task_count)
        end)

        it("404 for another user's project and for unknown ids", function()
            local p = create(ALICE)
            rejects(404, "Project not found", projects.get, req(BOB, { params = { id = p.id } }))
            rejects(404, "Project not found", projects.get, req(ALICE, { params = { id = p.id + 1 } }))
            rejects(404, "Project not found", projects.get, req(ALICE, { params = { id = 0 } }))
        end)
    end)

    describe("PUT /api/projects/<int:id>", function()
        local function put(user, id, body)
            return call(projects.update, req(user, { method = "PUT", params = { id = id }, body = body }))
        end

        it("updates the allowed fields", function()
            local p = create(ALICE)
            local status, body = put(ALICE, p.id, { name = "New", description = "d", settings = { k = "v" },
                is_active = false })
            assert.are.equal(200, status)
            assert.are.equal("success", body.status)
            assert.are.equal("New", body.project.name)
            assert.are.equal("d", body.project.description)
            assert.are.equal("v", body.project.settings.k)
            assert.is_false(body.project.is_active)
            assert.are.equal(REPO, body.project.repo_url)
        end)

        it("re-parses repo_url into repo_owner and repo_name", function()
            local p = create(ALICE)
            local _, body = put(ALICE, p.id, { repo_url = "git@github.com:new-owner/new-repo.git" })
            assert.are.equal("new-owner", body.project.repo_owner)
            assert.are.equal("new-repo", body.project.repo_name)
            assert.are.equal("git@github.com:new-owner/new-repo.git", body.project.repo_url)
        end)

        it("refuses mass assignment, naming the fields", function()
            local p = create(ALICE)
            rejects(400, "Unknown or read-only field(s): user_id", projects.update,
                req(ALICE, { method = "PUT", params = { id = p.id }, body = { user_id = BOB } }))
            rejects(400, "Unknown or read-only field(s): created_at, id, repo_owner", projects.update,
                req(ALICE, { method = "PUT", params = { id = p.id }, body = {
                    id = 5, created_at = "x", repo_owner = "evil", name = "ok" } }))
            assert.are.equal("Hello", store:get_project(ALICE, p.id).name)
        end)

        it("400 for an empty body, an empty name, a bad URL or wrong types", function()
            local p = create(ALICE)
            local function bad(message, body)
                rejects(400, message, projects.update,
                    req(ALICE, { method = "PUT", params = { id = p.id }, body = body }))
            end
            bad("No data provided", "{}")
            bad("No data provided", "[]")
            bad("name must not be empty", { name = "" })
            bad("Invalid GitHub URL format: https://gitlab.com/a/b", { repo_url = "https://gitlab.com/a/b" })
            bad("is_active must be a boolean", { is_active = 0 })
            bad("settings must be an object", '{"settings":[1]}')
            rejects(400, "No data provided", projects.update, req(ALICE, { method = "PUT", params = { id = p.id } }))
        end)

        it("404 for another user's project, which stays unchanged", function()
            local p = create(ALICE)
            rejects(404, "Project not found", projects.update,
                req(BOB, { method = "PUT", params = { id = p.id }, body = { name = "mine now" } }))
            assert.are.equal("Hello", store:get_project(ALICE, p.id).name)
        end)

        it("409 when the new repo_url duplicates another project's", function()
            create(ALICE, { name = "one", repo_url = "https://github.com/octo/one" })
            local p2 = create(ALICE, { name = "two", repo_url = "https://github.com/octo/two" })
            rejects(409, "A project for this repository already exists", projects.update,
                req(ALICE, { method = "PUT", params = { id = p2.id },
                    body = { repo_url = "https://github.com/octo/one" } }))
        end)
    end)

    describe("DELETE /api/projects/<int:id>", function()
        it("deletes the caller's project", function()
            local p = create(ALICE)
            local status, body = call(projects.delete, req(ALICE, { method = "DELETE", params = { id = p.id } }))
            assert.are.equal(200, status)
            assert.are.same({ status = "success", message = "Project deleted successfully" }, body)
            assert.is_nil(store:get_project(ALICE, p.id))
            rejects(404, "Project not found", projects.delete,
                req(ALICE, { method = "DELETE", params = { id = p.id } }))
        end)

        it("404 for another user's project, which survives", function()
            local p = create(ALICE)
            rejects(404, "Project not found", projects.delete, req(BOB, { method = "DELETE", params = { id = p.id } }))
            assert.is_not_nil(store:get_project(ALICE, p.id))
        end)

        it("503 when the store fails", function()
            stub(store, "delete_project").returns(nil, "disk I/O error")
            rejects(503, "Database unavailable", projects.delete,
                req(ALICE, { method = "DELETE", params = { id = 1 } }))
            store.delete_project:revert()
        end)
    end)

    describe("GET /api/projects/<int:id>/tasks", function()
        it("lists the project's tasks as full rows", function()
            local p = create(ALICE)
            local db = assert(host.sqlite.open(ctl.db_path))
            assert(db:run("INSERT INTO tasks (user_id, project_id, status, repo_url) VALUES (?, ?, 'completed', ?)",
                ALICE, p.id, REPO))
            db:close()
            local status, body = call(projects.tasks, req(ALICE, { params = { id = p.id } }))
            assert.are.equal(200, status)
            assert.are.equal("success", body.status)
            assert.are.equal(1, #body.tasks)
            local t = body.tasks[1]
            assert.are.equal("completed", t.status)
            assert.are.equal(p.id, t.project_id)
            assert.are.equal("integer", math.type(t.id))
            assert.is_true(json.is_array(t.changed_files))
            assert.is_true(json.is_array(t.chat_messages))
        end)

        it("answers [] for a project without tasks", function()
            local p = create(ALICE)
            local _, _, text = call(projects.tasks, req(ALICE, { params = { id = p.id } }))
            assert.are.equal('{"status":"success","tasks":[]}', text)
        end)

        it("404 for another user's project", function()
            local p = create(ALICE)
            rejects(404, "Project not found", projects.tasks, req(BOB, { params = { id = p.id } }))
        end)
    end)
end)
