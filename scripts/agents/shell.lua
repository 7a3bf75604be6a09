-- The shell agent: runs the prompt as a bash script in the repository. Needs no
-- model and works offline: for automation, demos and tests. The script arrives on
-- stdin (bash -s), so it is never interpolated into another shell string.
local _M = {
    name = "shell",
    description = "Runs the prompt as a bash script in the repository",
}

function _M.available()
    return true
end

function _M.command(ctx)
    return { argv = { "bash", "-s" }, stdin = ctx.prompt, env = {} }
end

function _M.parse(state, line)
    state.lines = state.lines or {}
    state.lines[#state.lines + 1] = line
    if #state.lines > 200 then table.remove(state.lines, 1) end
    return nil -- raw output is already streamed as "output" events
end

function _M.finish(state, res)
    local tail = table.concat(state.lines or {}, "\n")
    if res.code ~= 0 then
        local why = res.timed_out and "timed out" or
            (res.signal and ("was killed by signal " .. res.signal) or ("exited with status " .. tostring(res.code)))
        return { answer = tail, error = "The script " .. why }
    end
    return { answer = tail ~= "" and tail or "Script finished with no output." }
end

return _M
