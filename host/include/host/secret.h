/*
 * host.secret(name): an opaque handle to a secret environment variable.
 *
 * Scripts can pass a handle where a secret is needed (host.process env values,
 * host.http header values) without ever holding the value as a Lua string: the C
 * side resolves it at the moment of use. tostring(handle) is "[secret NAME]" and
 * handles cannot be concatenated, so a secret cannot leak into a log line or a
 * response by accident.
 *   h, err = host.secret("ANTHROPIC_API_KEY")   -- nil, "ANTHROPIC_API_KEY is not set"
 *   h = host.secret("OPENAI_API_KEY", "Bearer ")  -- resolves to "Bearer <value>"
 */
#ifndef HOST_SECRET_H
#define HOST_SECRET_H

#include <stddef.h>
#include <lua.h>

/** Pushes host.secret (a function). */
int host_open_secret(lua_State *L);

/**
 * If the value at idx is a secret handle, returns its value and sets *len;
 * otherwise NULL. The pointer stays valid until the next call on this VM (the
 * environment, or a registry slot for prefixed values): copy it at once.
 */
const char *host_secret_value(lua_State *L, int idx, size_t *len);

#endif
