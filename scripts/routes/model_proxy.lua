-- The model API proxy for sandboxed agents (/internal/model/...). An agent never
-- gets the server's ANTHROPIC_API_KEY or OPENAI_API_KEY: it gets a random token
-- valid only while its task runs, and its CLI's base URL points here. This route
-- swaps the token for the real key (a host.secret handle, resolved in C) and
-- forwards the request to the real endpoint, so a prompt that reads the agent's
-- environment learns nothing usable outside the run.
--
-- Responses stream through as they arrive (host.http.stream to a streaming
-- response), so the agent sees model output live.
local host = require "host"
local config = require "app.config"
local errors = require "app.errors"

local _M = {}

local FORWARD_HEADERS = { "content-type", "accept", "anthropic-version", "anthropic-beta", "openai-beta",
    "user-agent", "x-stainless-lang", "x-stainless-package-version", "x-app" }

local function run_token(req, provider)
    local token
    if provider == "anthropic" then
        token = req.headers["x-api-key"] or (req.headers.authorization or ""):match("^Bearer (%S+)$")
    else
        token = (req.headers.authorization or ""):match("^Bearer (%S+)$")
    end
    if not token or #token ~= 64 or not token:match("^%x+$") then return nil end
    return host.vault.get("model_token:" .. token) and token
end

local function forward(req, provider, path)
    local token = run_token(req, provider)
    if not token then errors.unauthorized("Invalid or expired model proxy token") end
    local s = config.get()
    local base, key
    if provider == "anthropic" then
        base = s.anthropic_upstream
        key = { ["x-api-key"] = host.secret("ANTHROPIC_API_KEY") }
    else
        base = s.openai_upstream
        key = { ["authorization"] = host.secret("OPENAI_API_KEY", "Bearer ") }
    end
    local name, secret = next(key)
    if not secret then errors.raise(503, "The server has no API key for " .. provider) end
    local headers = { [name] = secret }
    for _, h in ipairs(FORWARD_HEADERS) do headers[h] = req.headers[h] end
    local upstream, err = host.http.stream {
        method = req.method,
        url = base .. path .. (req.query and ("?" .. req.query) or ""),
        headers = headers,
        body = req.body,
        timeout_ms = s.model_proxy_timeout_ms,
        idle_timeout_s = 300,
        allow_http = base:match("^http://") ~= nil, -- operator-configured endpoint
    }
    if not upstream then errors.raise(502, "Model API unavailable (" .. tostring(err) .. ")") end
    -- When the run ends (finished, cancelled, timed out) its token is revoked: the
    -- upstream call is cut then, even if the agent's connection is already gone
    -- (h2o does not notice an HTTP/1 client leaving mid-request).
    local open = true
    host.spawn(function()
        while open do
            host.sleep(1)
            if open and not host.vault.get("model_token:" .. token) then
                upstream:close()
                break
            end
        end
    end)
    local status, up_headers = upstream:headers()
    if not status then
        open = false
        host.log("warn", "model proxy: upstream request failed", { provider = provider, error = up_headers })
        errors.raise(502, "Model API unavailable (" .. tostring(up_headers) .. ")")
    end
    -- The answer streams through as it arrives (server-sent events stay live).
    return {
        status = status,
        headers = { ["content-type"] = up_headers["content-type"] or "application/json" },
        stream = function(write)
            while true do
                local chunk = upstream:read()
                if not chunk then break end
                write(chunk)
            end
            open = false
            upstream:close()
        end,
    }
end

function _M.anthropic_root()
    return 200, { status = "ok" }
end

function _M.anthropic_messages(req) return forward(req, "anthropic", "/v1/messages") end
function _M.anthropic_count_tokens(req) return forward(req, "anthropic", "/v1/messages/count_tokens") end
function _M.openai_responses(req) return forward(req, "openai", "/responses") end
function _M.openai_models(req) return forward(req, "openai", "/models") end

return _M
