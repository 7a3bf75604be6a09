-- scripts/openapi.json must describe every route the host serves (scripts/init.lua,
-- plus the unprefixed aliases app.server registers) and nothing else, with the
-- response shapes the handlers really produce. The app is loaded through the real
-- prelude (helper.sandbox), exactly as bin/aicode loads a generation.
--
-- Every route is exercised through app.server.handle with the real SQLite store.
-- The task engine does not run: task states are set in the database, and the
-- event stream (text/event-stream) is drained and each event's data checked
-- against the schemas the document names for it. GitHub and the model providers
-- answer from the fake host's http queue; create-pr stops where a sandbox would be
-- needed (the fake host has no host.process), which is the documented 503.
local helper = require "support.helper"

local ALICE = "11111111-1111-4111-8111-111111111111"
local BOB = "22222222-2222-4222-8222-222222222222"
local HTTP_METHODS = { get = true, put = true, post = true, delete = true, options = true, head = true,
    patch = true, trace = true }

local json = helper.core.json
local text = assert(helper.fake_host.read_file(helper.ROOT .. "/scripts/openapi.json"))
local doc, doc_err = json.decode(text)

local function openapi_path(router_path)
    return (router_path:gsub("<int:([%w_]+)>", "{%1}"):gsub("<([%w_]+)>", "{%1}"))
end

-- Resolves a local "#/..." reference.
local function resolve(node)
    local seen = 0
    while type(node) == "table" and node["$ref"] do
        seen = seen + 1
        assert(seen < 20, "reference loop")
        local target = doc
        for part in node["$ref"]:gsub("^#/", ""):gmatch("[^/]+") do
            target = target[part]
            assert(target ~= nil, "unresolvable $ref " .. node["$ref"])
        end
        node = target
    end
    return node
end

-- A JSON Schema subset (type, const, enum, properties, required, additionalProperties,
-- items, minProperties, oneOf, anyOf, $ref) checked against a decoded JSON value.
local function json_type(v)
    if v == json.null then return "null" end
    local t = type(v)
    if t == "table" then return json.is_array(v) and "array" or "object" end
    if t == "number" then return math.type(v) == "integer" and "integer" or "number" end
    if t == "string" then return "string" end
    if t == "boolean" then return "boolean" end
    return t
end

local validate

local function type_ok(actual, expected)
    if actual == expected then return true end
    return expected == "number" and actual == "integer"
end

function validate(schema, v, where, errs)
    schema = resolve(schema)
    if schema.oneOf or schema.anyOf then
        local matches = 0
        for _, alt in ipairs(schema.oneOf or schema.anyOf) do
            local sub = {}
            validate(alt, v, where, sub)
            if #sub == 0 then matches = matches + 1 end
        end
        if (schema.oneOf and matches ~= 1) or (schema.anyOf and matches == 0) then
            errs[#errs + 1] = where .. ": matches " .. matches .. " alternatives"
        end
        return errs
    end
    local actual = json_type(v)
    if schema.type then
        local types = type(schema.type) == "table" and schema.type or { schema.type }
        local ok = false
        for _, t in ipairs(types) do ok = ok or type_ok(actual, t) end
        if not ok then
            errs[#errs + 1] = where .. ": expected " .. table.concat(types, "|") .. ", got " .. actual
            return errs
        end
    end
    if schema.const ~= nil and v ~= schema.const then
        errs[#errs + 1] = where .. ": expected " .. tostring(schema.const) .. ", got " .. tostring(v)
    end
    if schema.enum then
        local found = false
        for _, e in ipairs(schema.enum) do found = found or e == v end
        if not found then errs[#errs + 1] = where .. ": " .. tostring(v) .. " not in enum" end
    end
    if actual == "object" then
        for _, name in ipairs(schema.required or {}) do
            if v[name] == nil then errs[#errs + 1] = where .. ": missing required field " .. name end
        end
        local props = schema.properties or {}
        for k, item in pairs(v) do
            if props[k] then
                validate(props[k], item, where .. "." .. k, errs)
            elseif schema.additionalProperties == false then
                errs[#errs + 1] = where .. ": undocumented field " .. k
            elseif type(schema.additionalProperties) == "table" then
                validate(schema.additionalProperties, item, where .. "." .. k, errs)
            end
        end
        if schema.minProperties and next(v) == nil and schema.minProperties > 0 then
            errs[#errs + 1] = where .. ": fewer than minProperties"
        end
    elseif actual == "array" and schema.items then
        for i, item in ipairs(v) do validate(schema.items, item, where .. "[" .. i .. "]", errs) end
    end
    return errs
end

local function response_schema(op, status)
    local r = op.responses[tostring(status)] or op.responses.default
    if not r then return nil end
    r = resolve(r)
    return r.content and r.content["application/json"] and r.content["application/json"].schema
end

describe("scripts/openapi.json", function()
    local host, ctl, server, routes, init_routes

    setup(function()
        assert(doc, doc_err)
        host, ctl = helper.fresh_host({ env = {
            AUTH_TRUST_CLIENT_USER_ID = "1", SUPABASE_URL = false, AICODE_SUPABASE_JWT_MODE = false,
            RATE_LIMIT_PER_MINUTE = "0", RATE_LIMIT_IP_PER_MINUTE = "0", CORS_ORIGINS = false,
        } })
        local require_sandboxed, finish_loading = helper.sandbox(host)
        server = require_sandboxed("app.server")
        init_routes = require_sandboxed("init").routes
        local store = require_sandboxed("app.store")
        finish_loading()
        assert(store:ensure_user(ALICE, {}))
        assert(store:ensure_user(BOB, {}))
        routes = {}
        for _, r in ipairs(server.router.routes) do
            routes[#routes + 1] = { method = r.method, path = openapi_path(r.path), route = r.route }
        end
    end)

    teardown(function() ctl:cleanup() end)

    describe("the document", function()
        it("is valid JSON without duplicate keys", function()
            assert.is_table(doc, doc_err)
        end)

        it("is OpenAPI 3.1.x with a title and version", function()
            assert.matches("^3%.1%.%d+$", doc.openapi)
            assert.is_string(doc.info.title)
            assert.is_string(doc.info.version)
        end)

        it("declares the bearerAuth security scheme", function()
            assert.are.same({ type = "http", scheme = "bearer", bearerFormat = "JWT" }, {
                type = doc.components.securitySchemes.bearerAuth.type,
                scheme = doc.components.securitySchemes.bearerAuth.scheme,
                bearerFormat = doc.components.securitySchemes.bearerAuth.bearerFormat,
            })
        end)

        it("describes the error body as {error, request_id}", function()
            local e = doc.components.schemas.Error
            assert.are.equal("string", e.properties.error.type)
            assert.are.equal("string", e.properties.request_id.type)
            local required = {}
            for _, name in ipairs(e.required) do required[name] = true end
            assert.is_true(required.error)
            assert.is_true(required.request_id)
        end)

        it("resolves every $ref", function()
            local function walk(node, where)
                if type(node) ~= "table" or node == json.null then return end
                if node["$ref"] then
                    assert.has_no.errors(function() resolve(node) end, where)
                end
                for k, v in pairs(node) do walk(v, where .. "/" .. tostring(k)) end
            end
            walk(doc, "#")
        end)

        it("uses unique operationIds", function()
            local seen = {}
            for path, item in pairs(doc.paths) do
                for method, op in pairs(item) do
                    if HTTP_METHODS[method] then
                        assert.is_string(op.operationId, method .. " " .. path)
                        assert.is_nil(seen[op.operationId], op.operationId)
                        seen[op.operationId] = true
                    end
                end
            end
        end)
    end)

    describe("coverage", function()
        it("has routes to compare with (init.lua plus the unprefixed aliases)", function()
            local aliases = 0
            for _, r in ipairs(init_routes) do
                if r.unprefixed then aliases = aliases + 1 end
            end
            assert.is_true(#init_routes > 0)
            assert.are.equal(#init_routes + aliases, #routes)
        end)

        it("describes every (method, path) the router serves", function()
            local missing = {}
            for _, r in ipairs(routes) do
                local item = doc.paths[r.path]
                if not item or not item[r.method:lower()] then
                    missing[#missing + 1] = r.method .. " " .. r.path
                end
            end
            assert.are.same({}, missing)
        end)

        it("describes nothing that has no route", function()
            local served = {}
            for _, r in ipairs(routes) do served[r.method:lower() .. " " .. r.path] = true end
            local extra = {}
            for path, item in pairs(doc.paths) do
                for method in pairs(item) do
                    if HTTP_METHODS[method] and not served[method .. " " .. path] then
                        extra[#extra + 1] = method:upper() .. " " .. path
                    end
                end
            end
            table.sort(extra)
            assert.are.same({}, extra)
        end)
    end)

    describe("each operation", function()
        -- Routes the document lacks are reported by the coverage specs above.
        local function each(fn)
            for _, r in ipairs(routes) do
                local op = doc.paths[r.path] and doc.paths[r.path][r.method:lower()]
                if op then fn(r, op) end
            end
        end

        it("lists 500, 503 and 504 (the host can always answer them)", function()
            each(function(r, op)
                for _, code in ipairs({ "500", "503", "504" }) do
                    assert.is_not_nil(op.responses[code], r.method .. " " .. r.path .. " " .. code)
                end
            end)
        end)

        -- No credentials at all: [] or only {} alternatives.
        local function anonymous_only(sec)
            for _, req in ipairs(sec) do
                if next(req) ~= nil then return false end
            end
            return true
        end

        it("declares the streamToken scheme (the events route's query token)", function()
            local scheme = doc.components.securitySchemes.streamToken
            assert.are.same({ type = "apiKey", ["in"] = "query", name = "token" },
                { type = scheme.type, ["in"] = scheme["in"], name = scheme.name })
        end)

        it("requires bearerAuth and lists 401 and 429 when the route needs a user", function()
            each(function(r, op)
                local where = r.method .. " " .. r.path
                if r.route.auth == "user" then
                    assert.are.same({ { bearerAuth = json.array {} } }, op.security or doc.security, where)
                    assert.is_not_nil(op.responses["401"], where)
                    assert.is_not_nil(op.responses["429"], where)
                elseif r.route.auth == "stream" then
                    -- The bearer header, or (EventSource) a scoped token in the query.
                    assert.are.same({ { bearerAuth = json.array {} }, { streamToken = json.array {} } },
                        op.security, where)
                    assert.is_not_nil(op.responses["401"], where)
                    assert.is_not_nil(op.responses["429"], where)
                elseif r.route.rate == "none" then
                    assert.is_nil(op.responses["429"], where .. " is never rate limited")
                else
                    assert.is_not_nil(op.responses["429"], where)
                end
            end)
        end)

        -- Routes the pipeline does not authenticate never require bearerAuth. When the
        -- handler checks credentials of its own, the document names that scheme and
        -- lists 401; the open health/meta routes (rate = "none") never answer 401.
        it("has no bearerAuth requirement when the route needs none", function()
            each(function(r, op)
                if r.route.auth == nil then
                    local where = r.method .. " " .. r.path
                    local sec = op.security
                    assert.is_not_nil(sec, where .. " must override the global security")
                    for _, req in ipairs(sec) do assert.is_nil(req.bearerAuth, where) end
                    if not anonymous_only(sec) then
                        assert.is_not_nil(op.responses["401"], where)
                    elseif r.route.rate == "none" then
                        assert.is_nil(op.responses["401"], where)
                    end
                end
            end)
        end)

        it("documents a JSON request body, 400 and 415 for POST and PUT", function()
            each(function(r, op)
                if (r.method == "POST" or r.method == "PUT") and r.route.body ~= false then
                    local body = resolve(op.requestBody)
                    assert.is_table(body, r.method .. " " .. r.path)
                    assert.is_table(body.content["application/json"].schema)
                    assert.is_not_nil(op.responses["400"], r.method .. " " .. r.path)
                    assert.is_not_nil(op.responses["415"], r.method .. " " .. r.path)
                end
            end)
        end)

        it("documents a request body for POST routes that pass theirs through unparsed", function()
            each(function(r, op)
                if r.method == "POST" and r.route.body == false then
                    local body = resolve(op.requestBody)
                    assert.is_table(body, r.method .. " " .. r.path)
                    assert.is_table(body.content, r.method .. " " .. r.path)
                end
            end)
        end)

        it("declares path parameters as integers and lists 404", function()
            each(function(r, op)
                for name in r.path:gmatch("{([%w_]+)}") do
                    local found
                    for _, p in ipairs(op.parameters or {}) do
                        p = resolve(p)
                        if p.name == name and p["in"] == "path" then found = p end
                    end
                    assert.is_table(found, r.method .. " " .. r.path .. " parameter " .. name)
                    assert.is_true(found.required)
                    assert.are.equal("integer", found.schema.type)
                    assert.is_not_nil(op.responses["404"], r.method .. " " .. r.path)
                end
            end)
        end)

        -- An error body is the Error schema, or a schema named *Error that extends it
        -- (e.g. RepoAccessError: the original's 403 also names the GitHub user).
        local function is_error_schema(schema)
            local name = schema and schema["$ref"] and schema["$ref"]:match("^#/components/schemas/(%w*Error)$")
            if not name then return false end
            if name == "Error" then return true end
            local s, base = doc.components.schemas[name], doc.components.schemas.Error
            for _, field in ipairs(base.required) do
                local found = false
                for _, f in ipairs(s.required or {}) do found = found or f == field end
                if not found or s.properties[field].type ~= base.properties[field].type then return false end
            end
            return true
        end

        it("describes error statuses with the Error schema", function()
            each(function(r, op)
                for code, res in pairs(op.responses) do
                    local schema = response_schema(op, code)
                    local n = tonumber(code)
                    if n and n >= 400 and not (r.route.handler == "routes.health.health" and code == "503") then
                        assert.is_true(is_error_schema(schema), r.method .. " " .. r.path .. " " .. code)
                    end
                    assert.is_string(resolve(res).description)
                end
            end)
        end)

        it("describes the event stream's media type and its data schemas", function()
            each(function(r, op)
                if r.route.auth == "stream" then
                    local media = op.responses["200"].content["text/event-stream"]
                    assert.is_table(media, r.method .. " " .. r.path)
                    assert.is_nil(op.responses["200"].content["application/json"])
                    local desc = op.description
                    for _, t in ipairs({ "status", "step", "output", "assistant", "tool_call", "tool_result",
                        "result", "notice", "end" }) do
                        assert.is_truthy(desc:find("`" .. t .. "`", 1, true), r.path .. " event " .. t)
                    end
                    local schemas = media["x-event-data-schemas"]
                    assert.is_table(resolve(schemas.default).properties.type)
                    assert.is_table(resolve(schemas["end"]).properties.status)
                end
            end)
        end)
    end)

    -- Every route, through the real pipeline (app.server.handle): the status must be
    -- documented and the body must match the documented schema.
    describe("responses match the document", function()
        local token, other_token, project_id

        local function call(method, path, opts)
            opts = opts or {}
            local headers = opts.headers or {}
            if opts.token ~= false then headers.authorization = "Bearer " .. (opts.token or token) end
            local body
            if opts.body ~= nil then
                body = type(opts.body) == "string" and opts.body or assert(json.encode(opts.body))
                headers["content-type"] = headers["content-type"] or "application/json"
            end
            local res = helper.handle(server, helper.request({ method = method, path = path, query = opts.query,
                headers = headers, body = body }))
            if res.stream and not opts.raw_stream and res.headers["content-type"] ~= "text/event-stream" then
                -- a streamed JSON answer (the model proxy): read it to its end
                local parts = {}
                res.stream(function(chunk) parts[#parts + 1] = chunk end)
                res.body = table.concat(parts)
            end
            return res, res.body and json.decode(res.body)
        end

        local function check(method, path, opts, expected_status)
            local res, body = call(method, path, opts)
            local template = path:gsub("/%d+", "/{id}")
            local item = doc.paths[template]
            assert.is_table(item, template)
            local op = item[method:lower()]
            if not op and res.status == 405 then -- any operation of the path documents its 405
                for m, candidate in pairs(item) do
                    if HTTP_METHODS[m] then op = candidate end
                end
            end
            assert.is_table(op, method .. " " .. template)
            if expected_status then
                assert.are.equal(expected_status, res.status, method .. " " .. path .. ": " .. res.body)
            end
            local schema = response_schema(op, res.status)
            assert.is_table(schema, method .. " " .. template .. " answered undocumented " .. res.status)
            assert.are.same({}, validate(schema, body, method .. " " .. path .. " " .. res.status, {}))
            return res, body
        end

        setup(function()
            token = host.jwt.issue(ALICE, "access")
            other_token = host.jwt.issue(BOB, "access")
        end)

        it("health routes (/, /ping, /health and their aliases)", function()
            local checked = 0
            for _, r in ipairs(routes) do
                if r.route.handler:match("^routes%.health%.") then
                    check(r.method, r.path, { token = false }, 200)
                    checked = checked + 1
                end
            end
            assert.is_true(checked >= 3)
        end)

        it("GET /api/openapi.json serves this file byte for byte", function()
            local res = call("GET", "/api/openapi.json", { token = false })
            assert.are.equal(200, res.status)
            assert.are.equal(text, res.body)
            assert.are.equal("application/json", res.headers["content-type"])
        end)

        it("auth routes", function()
            local _, pair = check("POST", "/api/auth/token", { token = false, body = { user_id = ALICE } }, 200)
            check("POST", "/api/auth/refresh", { token = false, body = { refresh_token = pair.refresh_token } }, 200)
            check("GET", "/api/auth/verify", {}, 200)
            check("POST", "/api/auth/token", { token = false, body = { user_id = "nope" } }, 400)
            check("POST", "/api/auth/refresh", { token = false, body = { refresh_token = pair.access_token } }, 401)
            check("GET", "/api/auth/verify", { token = "garbage" }, 401)
            check("GET", "/api/auth/verify", { token = false }, 401)
        end)

        for _, prefix in ipairs({ "/api", "" }) do
            it("project routes under '" .. prefix .. "'", function()
                local repo = "https://github.com/octo/repo" .. (prefix == "" and "-bare" or "")
                local _, created = check("POST", prefix .. "/projects", { body = { name = "n", repo_url = repo } }, 200)
                project_id = created.project.id
                local db = assert(host.sqlite.open(ctl.db_path))
                assert(db:run("INSERT INTO tasks (user_id, project_id, status, chat_messages) VALUES (?, ?, ?, ?)",
                    ALICE, project_id, "completed",
                    '[{"role":"user","content":"hi","timestamp":"2026-01-01T00:00:00Z"}]'))
                db:close()
                local item = prefix .. "/projects/" .. project_id
                check("GET", prefix .. "/projects", {}, 200)
                check("GET", item, {}, 200)
                check("PUT", item, { body = { name = "renamed", settings = { a = 1 } } }, 200)
                check("GET", item .. "/tasks", {}, 200)
                check("POST", prefix .. "/projects", { body = { name = "n", repo_url = repo } }, 409)
                check("POST", prefix .. "/projects", { body = { name = "n", repo_url = "http://x" } }, 400)
                check("POST", prefix .. "/projects", { body = "{", }, 400)
                check("POST", prefix .. "/projects",
                    { body = "{}", headers = { ["content-type"] = "text/plain" } }, 415)
                check("PUT", item, { body = { user_id = BOB } }, 400)
                check("GET", item, { token = other_token }, 404)
                check("PUT", item, { token = other_token, body = { name = "x" } }, 404)
                check("DELETE", item, { token = other_token }, 404)
                check("GET", item .. "/tasks", { token = other_token }, 404)
                check("GET", prefix .. "/projects", { token = false }, 401)
                check("DELETE", item, {}, 200)
                check("GET", item, {}, 404)
            end)
        end

        -- Task rows in a given state, straight into the store (the engine does not run in specs).
        local function set_task(id, fields)
            local sets, args = {}, {}
            for k, v in pairs(fields) do
                sets[#sets + 1] = k .. " = ?"
                args[#args + 1] = v
            end
            args[#args + 1] = id
            local db = assert(host.sqlite.open(ctl.db_path))
            assert(db:run("UPDATE tasks SET " .. table.concat(sets, ", ") .. " WHERE id = ?", table.unpack(args)))
            db:close()
        end

        local function add_event(id, type, data)
            local db = assert(host.sqlite.open(ctl.db_path))
            local _, event_id = assert(db:run("INSERT INTO task_events (task_id, type, data) VALUES (?, ?, ?)",
                id, type, (assert(json.encode(data)))))
            db:close()
            return event_id
        end

        -- Runs a streaming response to its end; returns the parsed SSE events
        -- ({id=, event=, data=decoded}) and the raw text.
        local function drain(res)
            local chunks = {}
            res.stream(function(chunk) chunks[#chunks + 1] = chunk end)
            local raw = table.concat(chunks)
            local events = {}
            for frame in raw:gmatch("(.-)\n\n") do
                local e = {}
                for line in (frame .. "\n"):gmatch("(.-)\n") do
                    local field, value = line:match("^([%w]+): ?(.*)$")
                    if field == "id" then e.id = tonumber(value)
                    elseif field == "event" then e.event = value
                    elseif field == "data" then e.data = assert(json.decode(value), value) end
                end
                if e.event then events[#events + 1] = e end
            end
            return events, raw
        end

        -- GET .../events through the pipeline: the documented media type, and every
        -- event's data matches the documented schema for its type.
        local function check_stream(path, opts, expected_status)
            local res = call("GET", path, opts)
            local op = doc.paths[(path:gsub("/%d+", "/{id}"))].get
            if res.status ~= 200 then
                assert.are.equal(expected_status, res.status, path .. ": " .. tostring(res.body))
                local schema = response_schema(op, res.status)
                assert.is_table(schema, path .. " answered undocumented " .. res.status)
                assert.are.same({}, validate(schema, json.decode(res.body), path .. " " .. res.status, {}))
                return res
            end
            assert.are.equal(expected_status, 200)
            local media = op.responses["200"].content[res.headers["content-type"]]
            assert.is_table(media, "undocumented content type " .. tostring(res.headers["content-type"]))
            assert.are.equal("no-cache", res.headers["cache-control"])
            local events, raw = drain(res)
            assert.matches("^: connected\nretry: 2000\n\n", raw)
            local schemas = media["x-event-data-schemas"]
            for i, e in ipairs(events) do
                local schema = schemas[e.event] or schemas.default
                assert.are.same({}, validate(schema, e.data, path .. " event " .. i .. " (" .. e.event .. ")", {}))
                if e.event ~= "end" then
                    assert.are.equal(e.id, e.data.id)
                    assert.are.equal(e.event, e.data.type)
                end
            end
            return res, events
        end

        for _, prefix in ipairs({ "/api", "" }) do
            it("task routes under '" .. prefix .. "'", function()
                local repo = "https://github.com/octo/tasks"
                local function start_body(extra)
                    local b = { prompt = "echo hello", repo_url = repo, model = "shell" }
                    for k, v in pairs(extra or {}) do b[k] = v end
                    return b
                end
                local _, started = check("POST", prefix .. "/start-task", { body = start_body() }, 200)
                local id = started.task_id
                -- Idempotency-Key: the retry answers the first task.
                local key = "retry-" .. prefix
                local _, first = check("POST", prefix .. "/start-task",
                    { body = start_body(), headers = { ["idempotency-key"] = key } }, 200)
                local _, retry = check("POST", prefix .. "/start-task",
                    { body = start_body({ prompt = "other" }), headers = { ["idempotency-key"] = key } }, 200)
                assert.are.equal(first.task_id, retry.task_id)
                assert.are_not.equal(id, first.task_id)
                check("POST", prefix .. "/start-task", { body = start_body(),
                    headers = { ["idempotency-key"] = string.rep("k", 201) } }, 400)
                check("POST", prefix .. "/start-task", { body = {} }, 400)
                check("POST", prefix .. "/start-task", {}, 400)
                check("POST", prefix .. "/start-task", { body = "[1]" }, 400)
                check("POST", prefix .. "/start-task", { body = start_body({ prompt = " " }) }, 400)
                check("POST", prefix .. "/start-task", { body = start_body({ repo_url = "http://github.com/o/r" }) },
                    400)
                check("POST", prefix .. "/start-task", { body = start_body({ branch = "a..b" }) }, 400)
                check("POST", prefix .. "/start-task", { body = start_body({ model = "nope" }) }, 400)
                check("POST", prefix .. "/start-task", { body = start_body({ github_token = "a b" }) }, 400)
                check("POST", prefix .. "/start-task", { body = start_body({ project_id = "1" }) }, 400)
                check("POST", prefix .. "/start-task", { body = start_body({ project_id = 999999 }) }, 404)
                check("POST", prefix .. "/start-task",
                    { body = "{}", headers = { ["content-type"] = "text/plain" } }, 415)
                check("POST", prefix .. "/start-task", { token = false, body = start_body() }, 401)
                check("GET", prefix .. "/start-task", {}, 405)

                local _, status = check("GET", prefix .. "/task-status/" .. id, {}, 200)
                assert.are.equal("echo hello", status.task.prompt)
                assert.are.equal("main", status.task.branch)
                check("GET", prefix .. "/task-status/" .. id, { token = other_token }, 404)
                check("GET", prefix .. "/task-status/" .. id, { token = false }, 401)

                local _, list = check("GET", prefix .. "/tasks", {}, 200)
                assert.is_table(list.tasks[tostring(id)])
                for k, t in pairs(list.tasks) do assert.are.equal(k, tostring(t.id)) end
                local _, filtered = check("GET", prefix .. "/tasks",
                    { query = "status=failed&limit=5&offset=0&project_id=abc" }, 200)
                assert.are.same({}, filtered.tasks)
                check("GET", prefix .. "/tasks", { query = "limit=0" }, 400)
                check("GET", prefix .. "/tasks", { query = "offset=-1" }, 400)
                check("GET", prefix .. "/tasks", { query = "status=done" }, 400)
                check("GET", prefix .. "/tasks", { token = false }, 401)

                check("GET", prefix .. "/tasks/" .. id, {}, 200)
                check("GET", prefix .. "/tasks/" .. id, { token = other_token }, 404)
                check("GET", prefix .. "/tasks/999999", {}, 404)
                check("GET", prefix .. "/git-diff/" .. id, {}, 200)
                check("GET", prefix .. "/git-diff/999999", {}, 404)

                -- chat: busy while pending; validation first; then a follow-up of a finished task.
                local chat = prefix .. "/tasks/" .. id .. "/chat"
                check("POST", chat, { body = { content = "more" } }, 409)
                check("POST", chat, { body = { content = " " } }, 400)
                check("POST", chat, { body = { content = "x", role = "assistant" } }, 400)
                check("POST", chat, { body = {} }, 400)
                check("POST", chat, { body = "{}", headers = { ["content-type"] = "text/plain" } }, 415)
                check("POST", prefix .. "/tasks/999999/chat", { body = { content = "x" } }, 404)
                check("POST", chat, { token = other_token, body = { content = "x" } }, 404)

                -- cancel: pending -> cancelled; finished -> 409; running -> cancelling.
                local cancel = prefix .. "/tasks/" .. id .. "/cancel"
                local _, cancelled = check("POST", cancel, {}, 200)
                assert.are.equal("cancelled", cancelled.task_status)
                check("POST", cancel, {}, 409)
                check("POST", cancel, { body = "{", }, 400)
                check("POST", prefix .. "/tasks/999999/cancel", {}, 404)
                local _, followup = check("POST", chat, { body = { content = "again", github_token = "ghp_x" } }, 200)
                assert.are.equal("pending", followup.task.status)
                assert.are.equal("again", followup.task.chat_messages[2].content)
                set_task(id, { status = "running" })
                local _, cancelling = check("POST", cancel, { body = {} }, 200)
                assert.are.equal("cancelling", cancelling.task_status)

                -- events-token and the event stream.
                local _, et = check("POST", prefix .. "/tasks/" .. id .. "/events-token", {}, 200)
                check("POST", prefix .. "/tasks/999999/events-token", {}, 404)
                check("POST", prefix .. "/tasks/" .. id .. "/events-token", { token = other_token }, 404)
                local _, other_et = check("POST", prefix .. "/tasks/" .. first.task_id .. "/events-token", {}, 200)

                set_task(id, { status = "completed", git_diff = "diff --git a/x b/x\n", git_patch = "From x\n",
                    commit_hash = "abc123", changed_files = '["x"]', completed_at = "2026-01-01T00:00:00.000Z" })
                local step = add_event(id, "step", { name = "clone", state = "finished", duration_ms = 12 })
                add_event(id, "output", { stream = "stdout", text = "hello" })
                add_event(id, "result", { changed = true, commit_hash = "abc123", changed_files = { "x" },
                    answer = "done" })
                add_event(id, "status", { status = "completed" })

                local events_path = prefix .. "/tasks/" .. id .. "/events"
                local _, events = check_stream(events_path, {}, 200)
                local types = {}
                for _, e in ipairs(events) do types[#types + 1] = e.event end
                assert.are.same({ "status", "status", "status", "step", "output", "result", "status", "end" }, types)
                assert.are.equal("completed", events[#events].data.status)
                assert.is_nil(events[#events].id)
                -- Resuming: Last-Event-ID (header) or last_event_id (query).
                local _, resumed = check_stream(events_path, { headers = { ["last-event-id"] = tostring(step) } }, 200)
                assert.are.equal("output", resumed[1].event)
                _, resumed = check_stream(events_path, { query = "last_event_id=" .. step }, 200)
                assert.are.equal("output", resumed[1].event)
                -- The query token (EventSource): only for its own task, only without a header.
                local _, by_token = check_stream(events_path, { token = false, query = "token=" .. et.token }, 200)
                assert.are.equal(#events, #by_token)
                check_stream(events_path, { token = false, query = "token=" .. other_et.token }, 401)
                check_stream(events_path, { token = false, query = "token=" .. token }, 401)
                check_stream(events_path, { token = false }, 401)
                check_stream(events_path, { token = other_token }, 404)
                check_stream(prefix .. "/tasks/999999/events", {}, 404)
                check("POST", events_path, {}, 405)

                local _, diff = check("GET", prefix .. "/git-diff/" .. id, {}, 200)
                assert.are.equal("diff --git a/x b/x\n", diff.git_diff)
                _, list = check("GET", prefix .. "/tasks", { query = "status=completed" }, 200)
                assert.is_true(list.tasks[tostring(id)].has_patch)
            end)
        end

        it("GitHub routes (GitHub answers from the fake host)", function()
            local function gh(status, body)
                ctl:queue_http({ status = status, body = assert(json.encode(body)) })
            end
            local repo = "https://github.com/octo/tasks"
            for _, prefix in ipairs({ "/api", "" }) do
                local path = prefix .. "/validate-token"
                gh(200, { login = "octocat" })
                local _, v = check("POST", path, { body = { github_token = "ghp_x" } }, 200)
                assert.are.equal("octocat", v.user)
                gh(200, { login = "octocat" })
                gh(200, { full_name = "octo/tasks", private = true, default_branch = "main",
                    permissions = { pull = true, push = true, admin = false } })
                _, v = check("POST", path, { body = { github_token = "ghp_x", repo_url = repo } }, 200)
                assert.is_true(v.repo.permissions.create_branches)
                gh(200, { login = "octocat" })
                gh(404, { message = "Not Found" })
                local _, denied = check("POST", path, { body = { github_token = "ghp_x", repo_url = repo } }, 403)
                assert.are.equal("octocat", denied.user)
                gh(401, { message = "Bad credentials" })
                check("POST", path, { body = { github_token = "ghp_bad" } }, 401)
                gh(500, { message = "boom" })
                check("POST", path, { body = { github_token = "ghp_x" } }, 502)
                ctl:queue_http("timeout")
                check("POST", path, { body = { github_token = "ghp_x" } }, 502)
                -- a repo_url that is not allowed is refused before GitHub is asked anything
                local calls = #ctl.http_calls
                check("POST", path, { body = { github_token = "ghp_x", repo_url = "https://evil.example/o/r" } }, 400)
                assert.are.equal(calls, #ctl.http_calls)
                check("POST", path, { body = {} }, 400)
                check("POST", path, {}, 400)
                check("POST", path, { body = { github_token = "a b" } }, 400)
                check("POST", path, { body = "{}", headers = { ["content-type"] = "text/plain" } }, 415)
                check("POST", path, { token = false, body = { github_token = "ghp_x" } }, 401)
                check("GET", path, {}, 405)
            end

            local function new_task(fields)
                local _, started = check("POST", "/api/start-task",
                    { body = { prompt = "p", repo_url = repo, model = "shell" } }, 200)
                if fields then set_task(started.task_id, fields) end
                return started.task_id
            end
            local pending = new_task()
            local no_patch = new_task({ status = "completed" })
            local done = new_task({ status = "completed", git_patch = "From x\n", changed_files = '["a","b"]' })
            local with_pr = new_task({ status = "completed", git_patch = "From x\n", pr_branch = "aicode/1",
                pr_number = 1, pr_url = "https://github.com/octo/tasks/pull/1" })
            for _, prefix in ipairs({ "/api", "" }) do
                local function pr(id) return prefix .. "/create-pr/" .. id end
                local body = { body = { github_token = "ghp_x" } }
                check("POST", pr(999999), body, 404)
                check("POST", pr(done), { token = other_token, body = { github_token = "ghp_x" } }, 404)
                check("POST", pr(pending), body, 400)
                check("POST", pr(no_patch), body, 400)
                check("POST", pr(done), { body = {} }, 400)
                check("POST", pr(done), { body = { github_token = "ghp_x", title = 1 } }, 400)
                check("POST", pr(done), { body = "{}", headers = { ["content-type"] = "text/plain" } }, 415)
                check("POST", pr(done), { token = false, body = { github_token = "ghp_x" } }, 401)
                local _, existing = check("POST", pr(with_pr), body, 200)
                assert.are.equal(1, existing.pr_number)
                ctl:queue_http({ status = 401, body = "{}" })
                check("POST", pr(done), body, 401)
                ctl:queue_http({ status = 404, body = "{}" })
                check("POST", pr(done), body, 404)
                ctl:queue_http("timeout")
                check("POST", pr(done), body, 502)
                -- No open PR yet: the branch must be pushed from a sandbox, which specs cannot create.
                gh(200, json.array {})
                check("POST", pr(done), body, 503)
                check("GET", pr(done), {}, 405)
            end
            -- An open PR from the branch already exists: it is answered and recorded.
            gh(200, { { number = 7, html_url = "https://github.com/octo/tasks/pull/7" } })
            local _, found = check("POST", "/api/create-pr/" .. done, { body = { github_token = "ghp_x" } }, 200)
            assert.are.same({ status = "success", pr_url = "https://github.com/octo/tasks/pull/7", pr_number = 7,
                branch = "aicode/" .. done, files_updated = 2 }, found)
            local _, t = check("GET", "/api/task-status/" .. done, {}, 200)
            assert.are.equal(7, t.task.pr_number)
            assert.are.same({}, ctl.http_queue)
        end)

        it("model proxy routes (/internal/model/...)", function()
            local run_token = string.rep("ab", 32)
            host.vault.put("model_token:" .. run_token, "1", 60)
            local anthropic = "/internal/model/anthropic/v1/messages"
            local function proxy(path, opts, status)
                opts.token = false
                return check(path:match("models$") and "GET" or "POST", path, opts, status)
            end
            check("GET", "/internal/model/anthropic", { token = false }, 200)
            -- The per-run token: x-api-key (Anthropic) or Bearer; anything else is a 401.
            proxy(anthropic, { body = { model = "m" } }, 401)
            proxy(anthropic, { body = { model = "m" }, headers = { ["x-api-key"] = string.rep("cd", 32) } }, 401)
            proxy(anthropic, { body = { model = "m" }, headers = { authorization = "Bearer " .. token } }, 401)
            proxy("/internal/model/openai/v1/models", { headers = { ["x-api-key"] = run_token } }, 401)
            -- No key configured on the server.
            ctl.secrets.ANTHROPIC_API_KEY = false
            proxy(anthropic, { body = { model = "m" }, headers = { ["x-api-key"] = run_token } }, 503)
            -- Forwarded with the server's key; the provider's status and body come back.
            ctl.secrets.ANTHROPIC_API_KEY = "sk-ant-spec"
            ctl.secrets.OPENAI_API_KEY = "sk-openai-spec"
            ctl:queue_http({ status = 200, headers = { ["content-type"] = "application/json" },
                body = '{"id":"msg_1","type":"message"}' })
            local _, answer = proxy(anthropic, { body = { model = "m" }, headers = { ["x-api-key"] = run_token } },
                200)
            assert.are.equal("msg_1", answer.id)
            local sent = ctl.http_calls[#ctl.http_calls]
            assert.are.equal("https://api.anthropic.com/v1/messages", sent.url)
            assert.are.equal("sk-ant-spec", ctl:secret_value(sent.headers["x-api-key"]))
            ctl:queue_http({ status = 429, body = '{"type":"error","error":{"type":"rate_limit_error"}}' })
            proxy("/internal/model/anthropic/v1/messages/count_tokens",
                { body = {}, headers = { authorization = "Bearer " .. run_token } }, 429)
            ctl:queue_http({ status = 200, body = '{"object":"list","data":[]}' })
            proxy("/internal/model/openai/v1/models", { headers = { authorization = "Bearer " .. run_token } }, 200)
            assert.are.equal("Bearer sk-openai-spec", ctl:secret_value(ctl.http_calls[#ctl.http_calls].headers
                .authorization))
            ctl:queue_http("timeout")
            proxy("/internal/model/openai/v1/responses",
                { body = { model = "m" }, headers = { authorization = "Bearer " .. run_token } }, 502)
            -- The body is forwarded unparsed: no 415 for another media type.
            ctl:queue_http({ status = 200, body = "{}" })
            proxy("/internal/model/openai/v1/responses", { body = "x", headers = {
                authorization = "Bearer " .. run_token, ["content-type"] = "text/plain" } }, 200)
            assert.are.equal("x", ctl.http_calls[#ctl.http_calls].body)
            -- Tokens die with their run.
            host.vault.take("model_token:" .. run_token)
            proxy(anthropic, { body = { model = "m" }, headers = { ["x-api-key"] = run_token } }, 401)
            check("DELETE", anthropic, { token = false }, 405)
        end)

        it("405 carries Allow and the error body", function()
            local res = check("PATCH", "/api/projects/1", {}, 405)
            assert.are.equal("DELETE, GET, HEAD, PUT", res.headers.allow)
            check("DELETE", "/api/projects", {}, 405)
            check("POST", "/ping", { token = false }, 405)
        end)

        it("unknown paths answer the error body with 404", function()
            local res, body = call("GET", "/api/nope", { token = false })
            assert.are.equal(404, res.status)
            assert.are.same({}, validate(doc.components.schemas.Error, body, "404", {}))
            assert.are.equal("spec-request-id", body.request_id)
        end)
    end)
end)
