-- aicode: the Lua side of the host (lualib/, loaded by bin/aicode's prelude as app.*).
--
-- Install offline into a local tree (no registry access needed; run from the repository root):
--   luarocks --lua-version 5.4 make --tree /tmp/rt aicode-dev-1.rockspec
-- or into ~/.luarocks:
--   luarocks --lua-version 5.4 make --local aicode-dev-1.rockspec
--
-- Every lualib/**/*.lua file must be listed under build.modules (spec/rockspec_spec.lua
-- fails otherwise, and when a listed file does not exist).
--
-- Dependencies. The LuaRocks registry is not reachable from this workplace, so nothing
-- below is fetched by luarocks; the packages come from Debian 12 (tools/deps.sh):
--   runtime  lua5.4 (liblua5.4-dev to build the host); the modules also need the C host
--            (`require "host"`: json, jwt, sqlite, log, http, shared, ...), i.e.
--            bin/aicode, or build/lua/host_core.so plus spec/support/fake_host.lua in specs.
--   tests    busted 2.1.1 (lua-busted; run as `lua5.4 /usr/bin/busted`), lua-filesystem
--            (lfs, used by the spec helpers), luacheck (lint), clang-format (lint).
-- Only the Lua version is declared as a dependency, so `luarocks make` works offline.
rockspec_format = "3.0"
package = "aicode"
version = "dev-1"

source = {
    url = "git+file:///work/main", -- required by the format; `luarocks make` builds the checkout in place
}

description = {
    summary = "aicode API: Lua routes and modules for the h2o + Lua 5.4 host",
    detailed = [[
The reusable Lua modules of the aicode host (router, validation, errors, auth,
configuration, CORS, rate limiting, store). The C host (bin/aicode) provides
`require "host"`; scripts/ holds the routes.
]],
    license = "Proprietary",
    labels = { "api", "h2o", "lua54" },
}

dependencies = {
    "lua >= 5.4, < 5.5",
}

test_dependencies = {
    -- Installed from Debian (lua-busted, lua-filesystem), documented here for completeness.
}

build = {
    type = "builtin",
    modules = {
        ["app.agent_util"] = "lualib/app/agent_util.lua",
        ["app.agents"] = "lualib/app/agents.lua",
        ["app.auth"] = "lualib/app/auth.lua",
        ["app.chat"] = "lualib/app/chat.lua",
        ["app.cli"] = "lualib/app/cli.lua",
        ["app.config"] = "lualib/app/config.lua",
        ["app.cors"] = "lualib/app/cors.lua",
        ["app.e2b"] = "lualib/app/e2b.lua",
        ["app.engine"] = "lualib/app/engine.lua",
        ["app.errors"] = "lualib/app/errors.lua",
        ["app.git"] = "lualib/app/git.lua",
        ["app.github"] = "lualib/app/github.lua",
        ["app.github_url"] = "lualib/app/github_url.lua",
        ["app.ratelimit"] = "lualib/app/ratelimit.lua",
        ["app.response"] = "lualib/app/response.lua",
        ["app.results"] = "lualib/app/results.lua",
        ["app.router"] = "lualib/app/router.lua",
        ["app.run"] = "lualib/app/run.lua",
        ["app.sandbox"] = "lualib/app/sandbox/init.lua",
        ["app.sandbox.e2b"] = "lualib/app/sandbox/e2b.lua",
        ["app.sandbox.local"] = "lualib/app/sandbox/local.lua",
        ["app.server"] = "lualib/app/server.lua",
        ["app.store"] = "lualib/app/store/init.lua",
        ["app.store.sqlite"] = "lualib/app/store/sqlite.lua",
        ["app.store.sqlite_tasks"] = "lualib/app/store/sqlite_tasks.lua",
        ["app.store.supabase"] = "lualib/app/store/supabase.lua",
        ["app.store.supabase_tasks"] = "lualib/app/store/supabase_tasks.lua",
        ["app.text"] = "lualib/app/text.lua",
        ["app.time"] = "lualib/app/time.lua",
        ["app.validate"] = "lualib/app/validate.lua",
        ["app.workflow_steps"] = "lualib/app/workflow_steps.lua",
    },
}

test = {
    type = "command",
    command = "lua5.4 /usr/bin/busted spec",
}
