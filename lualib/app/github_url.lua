-- GitHub repository URLs, with the original API's rules (seed-contract §1.4):
-- only https://github.com/<owner>/<repo>[.git][/] and git@github.com:<owner>/<repo>[.git].
local _M = {}

local NAME = "^[%w%-_%.]+$"

local function valid_part(s)
    return s ~= nil and #s > 0 and #s <= 100 and s:match(NAME) ~= nil and s ~= "." and s ~= ".."
end

-- Returns owner, repo (".git" stripped) or nil.
function _M.parse(url)
    if type(url) ~= "string" or #url > 300 then return nil end
    local owner, repo = url:match("^https://github%.com/([^/]+)/([^/]+)/?$")
    if not owner then
        owner, repo = url:match("^git@github%.com:([^/]+)/([^/]+)$")
    end
    if not owner then return nil end
    repo = repo:gsub("%.git$", "")
    if not valid_part(owner) or not valid_part(repo) then return nil end
    return owner, repo
end

return _M
