-- scripts/openapi.json must describe every route the host serves (scripts/init.lua,
-- plus the unprefixed aliases app.server registers) and nothing else, with the
-- response shapes the handlers really produce. The app is loaded through the real
-- prelude (helper.sandbox), exactly as bin/aicode loads a generation.
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
    local r = op.responses[tostring(status)]
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

        it("requires bearerAuth and lists 401 and 429 when the route needs a user", function()
            each(function(r, op)
                if r.route.auth == "user" then
                    assert.are.same({ { bearerAuth = json.array {} } }, op.security or doc.security)
                    assert.is_not_nil(op.responses["401"], r.method .. " " .. r.path)
                    assert.is_not_nil(op.responses["429"], r.method .. " " .. r.path)
                elseif r.route.rate == "none" then
                    assert.is_nil(op.responses["429"], r.method .. " " .. r.path .. " is never rate limited")
                    assert.is_nil(op.responses["401"], r.method .. " " .. r.path)
                else
                    assert.is_not_nil(op.responses["429"], r.method .. " " .. r.path)
                end
            end)
        end)

        it("has no security requirement when the route needs none", function()
            each(function(r, op)
                if r.route.auth ~= "user" then
                    local sec = op.security
                    assert.is_not_nil(sec, r.method .. " " .. r.path .. " must override the global security")
                    local anonymous = #sec == 0
                    for _, req in ipairs(sec) do anonymous = anonymous or next(req) == nil end
                    assert.is_true(anonymous, r.method .. " " .. r.path)
                end
            end)
        end)

        it("documents a JSON request body, 400 and 415 for POST and PUT", function()
            each(function(r, op)
                if r.method == "POST" or r.method == "PUT" then
                    local body = resolve(op.requestBody)
                    assert.is_table(body, r.method .. " " .. r.path)
                    assert.is_table(body.content["application/json"].schema)
                    assert.is_not_nil(op.responses["400"], r.method .. " " .. r.path)
                    assert.is_not_nil(op.responses["415"], r.method .. " " .. r.path)
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

        it("describes error statuses with the Error schema", function()
            each(function(r, op)
                for code, res in pairs(op.responses) do
                    local schema = response_schema(op, code)
                    if tonumber(code) >= 400 and not (r.route.handler == "routes.health.health" and code == "503") then
                        assert.are.equal("#/components/schemas/Error", schema and schema["$ref"],
                            r.method .. " " .. r.path .. " " .. code)
                    end
                    assert.is_string(resolve(res).description)
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
            local res = server.handle(helper.request({ method = method, path = path, headers = headers, body = body }))
            return res, json.decode(res.body)
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
