-- app.agent_util: helpers shared by scripts/agents/*. Event data must stay valid
-- UTF-8: host.json refuses to encode anything else, and the event would be lost.
local helper = require "support.helper"

describe("app.agent_util", function()
    local util, json

    setup(function()
        local host = helper.fresh_host()
        json = host.json
        util = require "app.agent_util"
    end)

    describe("clip", function()
        it("keeps short texts and non-strings as they are", function()
            assert.are.equal("hello", util.clip("hello"))
            assert.are.equal(string.rep("a", 8192), util.clip(string.rep("a", 8192)))
            assert.is_nil(util.clip(nil))
            assert.are.equal(5, util.clip(5))
        end)

        it("cuts long texts and says so", function()
            local clipped = util.clip(string.rep("a", 10000))
            assert.are.equal(string.rep("a", 8192) .. "\n... (truncated)", clipped)
        end)

        it("never cuts a UTF-8 character in half (the event could not be encoded)", function()
            local clipped = util.clip("a" .. string.rep("é", 5000))
            assert.is_truthy(utf8.len(clipped), "clip produced invalid UTF-8")
            assert.is_string(json.encode({ text = clipped }))
        end)
    end)

    describe("decode_line", function()
        it("answers JSON objects only", function()
            assert.are.same({ type = "x" }, util.decode_line('{"type":"x"}'))
            assert.is_nil(util.decode_line("[1]"))
            assert.is_nil(util.decode_line("plain text"))
            assert.is_nil(util.decode_line("{not json"))
            assert.is_nil(util.decode_line(""))
        end)
    end)

    describe("prompt_with_history", function()
        it("is the prompt alone for a first run", function()
            assert.are.equal("do it", util.prompt_with_history({ prompt = "do it" }))
            assert.are.equal("do it", util.prompt_with_history({ prompt = "do it", history = {} }))
        end)

        it("carries the conversation before the new request", function()
            local p = util.prompt_with_history({ prompt = "now this", history = {
                { role = "user", content = "first" }, { role = "assistant", content = "done" } } })
            assert.is_truthy(p:find("User: first\nAssistant: done\n", 1, true))
            assert.matches("New request:\nnow this$", p)
        end)
    end)

    describe("last_line and exit_reason", function()
        it("last_line answers the last non-blank line, at most 300 bytes", function()
            assert.are.equal("b", util.last_line("a\nb\n  \n"))
            assert.is_nil(util.last_line(""))
            assert.is_nil(util.last_line(nil))
            assert.are.equal(300, #util.last_line(string.rep("x", 400)))
        end)

        -- It becomes the task's error (stored, shown by task-status, sent in a status event).
        it("last_line never cuts a UTF-8 character in half", function()
            local line = util.last_line("a" .. string.rep("é", 200))
            assert.is_truthy(utf8.len(line), "last_line produced invalid UTF-8")
        end)

        it("exit_reason names a timeout, a signal or the exit status", function()
            assert.are.equal("timed out", util.exit_reason({ timed_out = true, code = 1 }))
            assert.are.equal("was killed by signal 9", util.exit_reason({ signal = 9 }))
            assert.are.equal("exited with status 2", util.exit_reason({ code = 2 }))
        end)
    end)
end)
