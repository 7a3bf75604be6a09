-- POST /api/auth/token, POST /api/auth/refresh, GET /api/auth/verify.
-- Same fields and claims as the original; issuing a token now needs proof of
-- identity (a Supabase access token whose sub is the user_id), unless the
-- operator explicitly restores the legacy behaviour (AUTH_TRUST_CLIENT_USER_ID=1).
local host = require "host"
local auth = require "app.auth"
local config = require "app.config"
local errors = require "app.errors"
local store = require "app.store"
local validate = require "app.validate"

local _M = {}

local function ensure_user(user_id, email)
    local user, err = store:ensure_user(user_id, { email = email })
    if not user then errors.store_unavailable(err) end
end

function _M.token(req)
    local body = validate.body_object(req, "user_id is required")
    local user_id = body.user_id
    if type(user_id) ~= "string" or user_id == "" then errors.bad_request("user_id is required") end
    if not validate.is_uuid(user_id) then errors.bad_request("user_id must be a UUID") end
    user_id = user_id:lower()

    local s = config.get()
    local email
    if s.trust_client_user_id then
        host.log("warn", "issuing tokens without proof of identity (AUTH_TRUST_CLIENT_USER_ID=1)",
            { user_id = user_id })
    elseif config.supabase_auth_enabled() then
        local claims = auth.verify_supabase(auth.bearer_token(req))
        if type(claims.sub) ~= "string" or claims.sub:lower() ~= user_id then
            errors.raise(403, "user_id does not match the Supabase access token")
        end
        email = type(claims.email) == "string" and claims.email or nil
    else
        errors.raise(403, "Token issuance over HTTP requires Supabase auth (SUPABASE_URL or " ..
            "SUPABASE_JWT_SECRET); issue tokens with `aicode token --user ID`")
    end
    ensure_user(user_id, email)
    return 200, auth.issue_pair(user_id)
end

function _M.refresh(req)
    local body = validate.body_object(req, "refresh_token is required")
    local token = body.refresh_token
    if type(token) ~= "string" or token == "" then errors.bad_request("refresh_token is required") end
    local claims, err = host.jwt.verify(token, "refresh")
    if not claims then errors.unauthorized(err) end
    local user, serr = store:get_user(claims.user_id)
    if serr then errors.store_unavailable(serr) end
    if not user then errors.unauthorized("User not found") end
    local access, expires_in = host.jwt.issue(claims.user_id, "access")
    return 200, { access_token = access, expires_in = expires_in }
end

function _M.verify(req)
    return 200, { valid = true, user_id = req.user_id }
end

return _M
