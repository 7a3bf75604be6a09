local helper = require "support.helper"

describe("app.time.iso8601", function()
    local time, ctl

    setup(function()
        ctl = select(2, helper.fresh_host({ now = 1700000000.25 }))
        time = require "app.time"
    end)

    it("formats the epoch", function()
        assert.are.equal("1970-01-01T00:00:00.000Z", time.iso8601(0))
    end)

    it("formats UTC with milliseconds and a Z", function()
        assert.are.equal("2023-11-14T22:13:20.000Z", time.iso8601(1700000000))
        assert.are.equal("2023-11-14T22:13:20.500Z", time.iso8601(1700000000.5))
    end)

    it("keeps integer epochs exact", function()
        assert.are.equal("2038-01-19T03:14:08.000Z", time.iso8601(2147483648))
    end)

    it("rounds to the nearest millisecond", function()
        assert.are.equal("1970-01-01T00:00:00.063Z", time.iso8601(0.0625)) -- 62.5 ms rounds up
        assert.are.equal("1970-01-01T00:00:01.125Z", time.iso8601(1.125))
        assert.are.equal("1970-01-01T00:00:01.001Z", time.iso8601(1.0006))
        assert.are.equal("1970-01-01T00:00:01.000Z", time.iso8601(1.0004))
    end)

    it("carries a rounded-up 1000 ms into the seconds", function()
        assert.are.equal("1970-01-01T00:00:02.000Z", time.iso8601(1.9996))
        assert.are.equal("1970-01-01T00:01:00.000Z", time.iso8601(59.9999))
        assert.are.equal("1971-01-01T00:00:00.000Z", time.iso8601(31535999.9999))
    end)

    it("defaults to host.now()", function()
        assert.are.equal("2023-11-14T22:13:20.250Z", time.iso8601())
        ctl:advance(0.5)
        assert.are.equal("2023-11-14T22:13:20.750Z", time.iso8601())
    end)

    it("always has the fixed shape", function()
        for _, t in ipairs({ 0, 0.001, 1e9 + 0.999, 1700000000.4999 }) do
            assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", time.iso8601(t))
        end
    end)
end)
