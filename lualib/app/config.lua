-- Settings the Lua side reads, with defaults and validation. The C host reads
-- its own (HOST, PORT, limits, TLS); see the README's configuration table.
-- Secret values (keys, JWT secrets) are never readable here: host.env refuses them,
-- and only their presence is checked.
local host = require "host"

local _M = {}

local function env(name, default)
    local v = host.env(name)
    if v == nil or v == "" then return default end
    return v
end

local function int_setting(name, default, min, max, problems)
    local raw = env(name)
    if raw == nil then return default end
    local n = math.tointeger(tonumber(raw))
    if not n or n < min or n > max then
        problems[#problems + 1] = string.format("%s must be an integer between %d and %d (got %q)",
            name, min, max, raw:sub(1, 40))
        return default
    end
    return n
end

local function split_list(s)
    local list = {}
    for item in (s or ""):gmatch("[^,]+") do
        item = item:match("^%s*(.-)%s*$")
        if item ~= "" then list[#list + 1] = item end
    end
    return list
end

-- Reads everything once per generation; returns settings, problems.
local function read()
    local problems = {}
    local s = {}
    s.cors_origins = split_list(env("CORS_ORIGINS", "http://localhost:3000"))
    for _, origin in ipairs(s.cors_origins) do
        if origin ~= "*" and not origin:match("^https?://[%w%.%-]+:?%d*$") then
            problems[#problems + 1] = "CORS_ORIGINS: not an origin (scheme://host[:port]): " .. origin:sub(1, 80)
        end
    end
    s.rate_limit_user = int_setting("RATE_LIMIT_PER_MINUTE", 600, 0, 10000000, problems)
    s.rate_limit_ip = int_setting("RATE_LIMIT_IP_PER_MINUTE", 120, 0, 10000000, problems)
    s.trust_proxy = env("TRUST_PROXY", "0") == "1"
    s.trust_client_user_id = env("AUTH_TRUST_CLIENT_USER_ID", "0") == "1"
    s.supabase_url = env("SUPABASE_URL")
    s.supabase_hs256 = env("AICODE_SUPABASE_JWT_MODE") == "hs256"
    s.jwks_cache_seconds = int_setting("JWKS_CACHE_SECONDS", 600, 10, 86400, problems)
    if s.supabase_url then
        s.supabase_url = s.supabase_url:gsub("/+$", "")
        if not s.supabase_url:match("^https://[^/]+$") and not s.supabase_url:match("^http://127%.0%.0%.1:%d+$")
            and not s.supabase_url:match("^http://localhost:%d+$") then
            problems[#problems + 1] = "SUPABASE_URL must be https://<project>.supabase.co (plain http only on loopback)"
        end
    end
    -- The store: Supabase (PostgREST at SUPABASE_URL/rest/v1 with the service-role key)
    -- when both are set, else the embedded SQLite; AICODE_STORE overrides the choice.
    s.supabase_service_key_set = host.has_env("SUPABASE_SERVICE_ROLE_KEY")
    s.store = env("AICODE_STORE", (s.supabase_url and s.supabase_service_key_set) and "supabase" or "sqlite")
    if s.store ~= "sqlite" and s.store ~= "supabase" then
        problems[#problems + 1] = "AICODE_STORE must be 'sqlite' or 'supabase' (got " .. string.format("%q",
            s.store:sub(1, 40)) .. ")"
        s.store = "sqlite"
    elseif s.store == "supabase" and not (s.supabase_url and s.supabase_service_key_set) then
        problems[#problems + 1] = "AICODE_STORE=supabase needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY"
    end
    s.access_ttl = 60 * int_setting("JWT_ACCESS_TOKEN_EXPIRE_MINUTES", 60, 1, 1440, problems)
    s.environment = env("ENVIRONMENT", "development")

    -- Task engine (issue #3)
    local function abs(path)
        if path:sub(1, 1) == "/" then return path end
        return host.info.cwd .. "/" .. path:gsub("^%./", "")
    end
    s.tools_dir = abs(env("AICODE_TOOLS_DIR", "./tools"))
    s.sandbox_root = abs(host.info.data_dir) .. "/sandboxes"
    s.sandbox_provider = env("SANDBOX_PROVIDER", "local")
    if s.sandbox_provider ~= "local" and s.sandbox_provider ~= "e2b" then
        problems[#problems + 1] = "SANDBOX_PROVIDER must be 'local' or 'e2b'"
    end
    if s.sandbox_provider == "e2b" and not host.has_env("E2B_API_KEY") then
        problems[#problems + 1] = "SANDBOX_PROVIDER=e2b needs E2B_API_KEY"
    end
    s.e2b_api_url = (env("E2B_API_URL", "https://api.e2b.app"):gsub("/+$", ""))
    s.e2b_domain = env("E2B_DOMAIN", "e2b.app")
    s.e2b_sandbox_url = env("E2B_SANDBOX_URL") and (env("E2B_SANDBOX_URL"):gsub("/+$", ""))
    s.e2b_template = env("E2B_TEMPLATE", "base")
    s.e2b_reap_interval = int_setting("E2B_REAP_INTERVAL_S", 60, 1, 86400, problems)
    -- Tags this deployment's sandboxes: the reaper never touches another one's.
    s.e2b_deployment = env("E2B_DEPLOYMENT", "aicode")
    -- The CLI versions pinned in tools/agents/package.json (a spec checks they match).
    s.agent_versions = { ["@anthropic-ai/claude-code"] = "2.1.197", ["@openai/codex"] = "0.171.0" }
    s.sandbox_network = env("SANDBOX_NETWORK", "on")
    if s.sandbox_network ~= "on" and s.sandbox_network ~= "none" then
        problems[#problems + 1] = "SANDBOX_NETWORK must be 'on' or 'none'"
    end
    s.sandbox_limits = {
        memory_bytes = int_setting("SANDBOX_MEMORY_MB", 2048, 0, 1048576, problems) * 1024 * 1024,
        pids = int_setting("SANDBOX_PIDS", 512, 0, 1000000, problems),
        cpu_seconds = int_setting("SANDBOX_CPU_SECONDS", 3600, 1, 86400, problems),
        file_bytes = int_setting("SANDBOX_FILE_MB", 1024, 1, 1048576, problems) * 1024 * 1024,
    }
    s.task_timeout = int_setting("TASK_TIMEOUT", 1800, 5, 86400, problems)
    -- ENGINE=off: an API-only host (it queues tasks; other hosts sharing the store run them).
    s.engine = env("ENGINE", "on")
    if s.engine ~= "on" and s.engine ~= "off" then problems[#problems + 1] = "ENGINE must be 'on' or 'off'" end
    s.clone_timeout = int_setting("CLONE_TIMEOUT", 300, 5, 86400, problems)
    s.max_concurrent_tasks = int_setting("MAX_CONCURRENT_TASKS", 4, 1, 1000, problems)
    s.max_tasks_per_user = int_setting("MAX_TASKS_PER_USER", 2, 1, 1000, problems)
    s.task_lease_seconds = int_setting("TASK_LEASE_SECONDS", 30, 2, 3600, problems)
    s.task_max_attempts = int_setting("TASK_MAX_ATTEMPTS", 2, 1, 10, problems)
    s.git_allowed_hosts = {}
    for _, h in ipairs(split_list(env("GIT_ALLOWED_HOSTS", "github.com"))) do
        s.git_allowed_hosts[h:lower()] = true
    end
    s.git_allow_http = env("GIT_ALLOW_HTTP", "0") == "1"
    s.git_bot_name = env("GIT_BOT_NAME", "aicode bot")
    s.git_bot_email = env("GIT_BOT_EMAIL", "aicode-bot@users.noreply.github.com")
    s.pr_branch_prefix = env("PR_BRANCH_PREFIX", "aicode/")
    s.github_api_url = (env("GITHUB_API_URL", "https://api.github.com"):gsub("/+$", ""))
    s.anthropic_base_url = env("ANTHROPIC_BASE_URL")
    s.openai_base_url = env("OPENAI_BASE_URL")
    s.anthropic_upstream = (env("ANTHROPIC_BASE_URL", "https://api.anthropic.com"):gsub("/+$", ""))
    s.openai_upstream = (env("OPENAI_BASE_URL", "https://api.openai.com/v1"):gsub("/+$", ""))
    s.model_proxy_timeout_ms = math.tointeger(tonumber(env("MODEL_PROXY_TIMEOUT_MS", "600000"))) or 600000
    -- Agents reach the model through this server (keys never enter the sandbox)
    -- unless MODEL_PROXY=off, or TLS is on (the CLIs would not trust our certificate).
    s.model_proxy = env("MODEL_PROXY", "on")
    if s.model_proxy ~= "on" and s.model_proxy ~= "off" then
        problems[#problems + 1] = "MODEL_PROXY must be 'on' or 'off'"
    end
    if host.info.tls then s.model_proxy = "off" end
    if s.model_proxy == "on" and env("MODEL_PROXY_URL") then
        -- Where sandboxes reach this server (E2B sandboxes are not on this machine).
        s.model_proxy_base = env("MODEL_PROXY_URL"):gsub("/+$", "") .. "/internal/model"
    elseif s.model_proxy == "on" then
        local h = host.info.listen_host or "127.0.0.1"
        if h == "0.0.0.0" or h == "::" or h == "" or h == "localhost" then h = "127.0.0.1" end
        if h:find(":", 1, true) then h = "[" .. h .. "]" end
        s.model_proxy_base = "http://" .. h .. ":" .. tostring(host.info.listen_port) .. "/internal/model"
    end
    s.claude_model = env("CLAUDE_MODEL")
    s.codex_model = env("CODEX_MODEL", "gpt-5-codex")
    return s, problems
end

local settings, problems = read()

function _M.get()
    return settings
end

-- Checks that need I/O (the Supabase store's schema version): registered by the module
-- that owns the resource, run by problems() when it is called from a coroutine that
-- may yield (the CLI's check-config and serve's validate-config). A check returns a
-- problem string, or nil when it finds none or cannot tell (an unreachable database
-- is not a configuration problem: /health reports it).
local checks = {}

function _M.add_check(fn)
    checks[#checks + 1] = fn
end

-- The problems found at load, then those of the registered checks (a fresh list).
function _M.problems()
    local list = {}
    for i, p in ipairs(problems) do list[i] = p end
    for _, check in ipairs(checks) do
        -- pcall: outside a request or the CLI the check cannot yield, and says nothing.
        local ok, problem = pcall(check)
        if ok and type(problem) == "string" then list[#list + 1] = problem end
    end
    return list
end

function _M.supabase_auth_enabled()
    return settings.supabase_hs256 or settings.supabase_url ~= nil
end

return _M
