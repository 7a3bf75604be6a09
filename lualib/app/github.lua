-- GitHub REST API client (GITHUB_API_URL, default https://api.github.com, so
-- GitHub Enterprise and test doubles work). The caller's token goes only into
-- the Authorization header of these requests.
local host = require "host"
local config = require "app.config"

local json = host.json

local _M = {}

-- -> status, body_table | nil, "unavailable"
function _M.request(method, path, token, body)
    local base = config.get().github_api_url
    local res, err = host.http.request {
        method = method,
        url = base .. path,
        headers = {
            ["Authorization"] = "Bearer " .. token,
            ["Accept"] = "application/vnd.github+json",
            ["X-GitHub-Api-Version"] = "2022-11-28",
            ["Content-Type"] = body and "application/json" or nil,
        },
        body = body and json.encode(body) or nil,
        timeout_ms = 15000,
        max_body = 4 * 1024 * 1024,
        -- An operator-configured endpoint (GitHub Enterprise, tests) may be plain http.
        allow_http = base:match("^http://") ~= nil,
    }
    if not res then
        host.log("warn", "GitHub API request failed", { path = path, error = err })
        return nil, "unavailable"
    end
    local decoded = json.decode(res.body)
    if type(decoded) ~= "table" then decoded = {} end
    return res.status, decoded
end

-- GitHub's own message for an error response, kept short.
function _M.message(body)
    local msg = type(body) == "table" and body.message
    if type(msg) ~= "string" then return "unknown error" end
    local detail = type(body.errors) == "table" and body.errors[1] and body.errors[1].message
    if type(detail) == "string" then msg = msg .. ": " .. detail end
    return msg:sub(1, 300)
end

function _M.user(token)
    return _M.request("GET", "/user", token)
end

function _M.repo(token, owner, repo)
    return _M.request("GET", "/repos/" .. owner .. "/" .. repo, token)
end

-- The open pull request from `branch` (in the same repository), or nil.
function _M.find_pr(token, owner, repo, branch)
    local status, body = _M.request("GET", "/repos/" .. owner .. "/" .. repo .. "/pulls?state=open&head=" ..
        owner .. ":" .. branch, token)
    if status ~= 200 or type(body) ~= "table" then return nil, status, body end
    local pr = body[1]
    if type(pr) == "table" and pr.number then return pr end
    return nil, status, body
end

function _M.create_pr(token, owner, repo, fields)
    return _M.request("POST", "/repos/" .. owner .. "/" .. repo .. "/pulls", token, fields)
end

return _M
