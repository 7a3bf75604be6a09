-- Capturing what a run changed: everything is staged (new, deleted, renamed and
-- binary files count), committed as the bot, and described relative to the base
-- commit the task started from, so a follow-up run's results cover all runs.
local host = require "host"
local git = require "app.git"
local text = require "app.text"

local json = host.json

local _M = {}

local MAX_FILE_CHANGES = 50          -- files whose before/after the diff view gets
local MAX_SHOWN_BYTES = 256 * 1024   -- per file side

local function split_nul(s)
    local out = {}
    for item in (s or ""):gmatch("[^%z]+") do out[#out + 1] = item end
    return out
end

-- Content of path at rev for the diff view, or the original's markers. Text that
-- is not UTF-8 (a legacy encoding) is shown as binary: the API speaks JSON.
local function show(sandbox, rev, path, missing_marker, binary)
    if binary then return "(binary file)" end
    local out, err, res = git.run(sandbox, { "show", rev .. ":" .. path })
    if not out then
        if res and res.code == 128 then return missing_marker end
        return nil, err
    end
    if not utf8.len(out) then return "(binary file)" end
    if #out > MAX_SHOWN_BYTES then
        return text.valid_utf8(text.clip(out, MAX_SHOWN_BYTES)) .. "\n... (truncated: " .. #out .. " bytes)"
    end
    return out
end

-- Paths gitattributes can name literally (anything else falls back to "*").
local function attr_pattern(path)
    if path:match("^[%w%._/%-]+$") then return "/" .. path end
    return nil
end

-- A diff or patch must be valid UTF-8 to travel as JSON. When a changed file is
-- in another encoding, git is told to treat it as binary (-diff): the patch then
-- carries it base85-encoded, still exact for `git am`.
local function mark_non_utf8_binary(sandbox, base, head, paths)
    local lines = {}
    for _, path in ipairs(paths) do
        for _, rev in ipairs({ base, head }) do
            local out = git.run(sandbox, { "show", rev .. ":" .. path })
            if out and not utf8.len(out) then
                lines[#lines + 1] = (attr_pattern(path) or "*") .. " -diff"
                break
            end
        end
    end
    if #lines == 0 then return true end
    return sandbox:write_file(sandbox.repo_dir .. "/.git/info/attributes", table.concat(lines, "\n") .. "\n")
end

-- Returns {commit_hash, git_diff, git_patch, changed_files, file_changes, changed}
-- or nil, err.
-- Stage everything, commit if anything changed (the message on stdin: a prompt
-- is never part of an argv), print HEAD: one sandboxed process.
local COMMIT_SCRIPT = [[
git add -A
if [ -n "$(git status --porcelain -z)" ]; then
    git commit -q --no-verify -F -
fi
git rev-parse HEAD
]]

function _M.capture(sandbox, base, message)
    local head, err = git.script(sandbox, "git commit", COMMIT_SCRIPT, {}, { stdin = message })
    if not head then return nil, err end
    head = head:gsub("%s+$", "")
    if head == base then
        return {
            changed = false, commit_hash = json.null, git_diff = "", git_patch = "",
            changed_files = json.array {}, file_changes = json.array {},
        }
    end
    local diff, patch, names, numstat
    -- Without rename detection a rename lists both paths (the old one deleted, the
    -- new one created), so nothing that changed is missing from the list.
    names, err = git.run(sandbox, { "diff", "--name-only", "-z", "--no-renames", base, head })
    if not names then return nil, err end
    local paths = split_nul(names)
    diff, err = git.run(sandbox, { "diff", base, head })
    if not diff then return nil, err end
    if not utf8.len(diff) then
        local ok, aerr = mark_non_utf8_binary(sandbox, base, head, paths)
        if not ok then return nil, aerr end
        diff, err = git.run(sandbox, { "diff", base, head })
        if not diff then return nil, err end
        if not utf8.len(diff) then
            -- a path no attribute pattern could name: everything as binary
            ok, aerr = sandbox:write_file(sandbox.repo_dir .. "/.git/info/attributes", "* -diff\n")
            if not ok then return nil, aerr end
            diff, err = git.run(sandbox, { "diff", base, head })
            if not diff then return nil, err end
        end
    end
    patch, err = git.run(sandbox, { "format-patch", "--binary", "--stdout", base .. ".." .. head })
    if not patch then return nil, err end
    numstat, err = git.run(sandbox, { "diff", "--numstat", "-z", "--no-renames", base, head })
    if not numstat then return nil, err end
    local binary = {}
    for added, path in numstat:gmatch("(%S+)\t%S+\t([^%z]+)%z") do
        if added == "-" then binary[path] = true end
    end
    local changed_files = {}
    for i, path in ipairs(paths) do changed_files[i] = text.valid_utf8(path) end
    local file_changes = json.array {}
    for i, path in ipairs(paths) do
        if i > MAX_FILE_CHANGES then break end
        local before = show(sandbox, base, path, "FILE_NOT_EXISTS", binary[path])
        local after = show(sandbox, head, path, "FILE_DELETED", binary[path])
        file_changes[#file_changes + 1] = { filename = changed_files[i], before = before or "", after = after or "" }
    end
    return {
        changed = true, commit_hash = head, git_diff = diff, git_patch = patch,
        changed_files = json.array(changed_files), file_changes = file_changes,
    }
end

return _M
