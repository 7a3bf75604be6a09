-- Text helpers for strings that leave the engine (events, errors, titles): they
-- must stay valid UTF-8, or host.json refuses to encode them.
local _M = {}

-- Replaces every invalid UTF-8 sequence, and NUL (which host.json refuses to
-- decode and C strings cannot hold), with U+FFFD.
function _M.valid_utf8(s)
    if type(s) ~= "string" then return s end
    if s:find("\0", 1, true) then s = s:gsub("%z", "\u{FFFD}") end
    if utf8.len(s) then return s end
    local out, i = {}, 1
    while true do
        local ok, bad = utf8.len(s, i)
        if ok then
            out[#out + 1] = s:sub(i)
            break
        end
        out[#out + 1] = s:sub(i, bad - 1) .. "\u{FFFD}"
        i = bad + 1
        if i > #s then break end
    end
    return table.concat(out)
end

-- At most `max` bytes, cut on a character boundary (never mid-character).
function _M.clip(s, max)
    if type(s) ~= "string" or #s <= max then return s end
    local cut = max
    -- Back off over continuation bytes (10xxxxxx) to the start of a character.
    while cut > 0 and (s:byte(cut + 1) or 0) & 0xC0 == 0x80 do cut = cut - 1 end
    return s:sub(1, cut)
end

return _M
