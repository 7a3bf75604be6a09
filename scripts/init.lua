-- Route declarations: the whole API surface in one place. Loaded once per
-- generation (no I/O here). Each route names its handler as "module.function";
-- auth = "user" requires a valid access token; rate = "none" exempts a route
-- from the per-IP limiter; unprefixed = true also serves it without "/api"
-- (the paths the original README lists).
return {
    routes = {
        { method = "GET", path = "/", handler = "routes.health.root", rate = "none" },
        { method = "GET", path = "/ping", handler = "routes.health.ping", rate = "none" },
        { method = "GET", path = "/health", handler = "routes.health.health", rate = "none" },
        { method = "GET", path = "/api/ping", handler = "routes.health.ping", rate = "none" },
        { method = "GET", path = "/api/health", handler = "routes.health.health", rate = "none" },
        { method = "GET", path = "/api/openapi.json", handler = "routes.docs.openapi", rate = "none" },

        { method = "POST", path = "/api/auth/token", handler = "routes.auth.token" },
        { method = "POST", path = "/api/auth/refresh", handler = "routes.auth.refresh" },
        { method = "GET", path = "/api/auth/verify", handler = "routes.auth.verify", auth = "user" },

        { method = "GET", path = "/api/projects", handler = "routes.projects.list", auth = "user", unprefixed = true },
        { method = "POST", path = "/api/projects", handler = "routes.projects.create", auth = "user",
            unprefixed = true },
        { method = "GET", path = "/api/projects/<int:id>", handler = "routes.projects.get", auth = "user",
            unprefixed = true },
        { method = "PUT", path = "/api/projects/<int:id>", handler = "routes.projects.update", auth = "user",
            unprefixed = true },
        { method = "DELETE", path = "/api/projects/<int:id>", handler = "routes.projects.delete", auth = "user",
            unprefixed = true },
        { method = "GET", path = "/api/projects/<int:id>/tasks", handler = "routes.projects.tasks", auth = "user",
            unprefixed = true },

        { method = "POST", path = "/api/start-task", handler = "routes.tasks.start", auth = "user", unprefixed = true },
        { method = "GET", path = "/api/task-status/<int:id>", handler = "routes.tasks.status", auth = "user",
            unprefixed = true },
        { method = "GET", path = "/api/tasks", handler = "routes.tasks.list", auth = "user", unprefixed = true },
        { method = "GET", path = "/api/tasks/<int:id>", handler = "routes.tasks.get", auth = "user",
            unprefixed = true },
        { method = "POST", path = "/api/tasks/<int:id>/chat", handler = "routes.tasks.chat", auth = "user",
            unprefixed = true },
        { method = "POST", path = "/api/tasks/<int:id>/cancel", handler = "routes.tasks.cancel", auth = "user",
            unprefixed = true },
        { method = "GET", path = "/api/tasks/<int:id>/events", handler = "routes.tasks.events", auth = "stream",
            scope = "task", unprefixed = true },
        { method = "POST", path = "/api/tasks/<int:id>/events-token", handler = "routes.tasks.events_token",
            auth = "user", unprefixed = true },
        { method = "GET", path = "/api/git-diff/<int:id>", handler = "routes.tasks.diff", auth = "user",
            unprefixed = true },
        { method = "POST", path = "/api/validate-token", handler = "routes.github.validate_token", auth = "user",
            unprefixed = true },
        { method = "POST", path = "/api/create-pr/<int:id>", handler = "routes.github.create_pr", auth = "user",
            unprefixed = true },

        -- The model API proxy for sandboxed agents: authenticated by a per-run token
        -- (checked by the handler), not rate-limited (an agent makes many calls).
        { method = "GET", path = "/internal/model/anthropic", handler = "routes.model_proxy.anthropic_root",
            rate = "none", body = false },
        { method = "POST", path = "/internal/model/anthropic/v1/messages",
            handler = "routes.model_proxy.anthropic_messages", rate = "none", body = false },
        { method = "POST", path = "/internal/model/anthropic/v1/messages/count_tokens",
            handler = "routes.model_proxy.anthropic_count_tokens", rate = "none", body = false },
        { method = "POST", path = "/internal/model/openai/v1/responses",
            handler = "routes.model_proxy.openai_responses", rate = "none", body = false },
        { method = "GET", path = "/internal/model/openai/v1/models", handler = "routes.model_proxy.openai_models",
            rate = "none", body = false },
    },
}
