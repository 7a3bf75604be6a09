local helper = require "support.helper"

describe("app.response", function()
    local response, json

    setup(function()
        local host = helper.fresh_host()
        json = host.json
        response = require "app.response"
    end)

    it("encodes the body as JSON with the content type", function()
        local res = response.json(200, { status = "success" })
        assert.are.equal(200, res.status)
        assert.are.equal("application/json", res.headers["content-type"])
        assert.are.equal('{"status":"success"}', res.body)
    end)

    it("keeps integers integers and floats floats", function()
        local res = response.json(200, { id = 42, big = 9007199254740993, ratio = 0.5, whole = 3.0 })
        assert.are.equal('{"big":9007199254740993,"id":42,"ratio":0.5,"whole":3.0}', res.body)
        local back = json.decode(res.body)
        assert.are.equal("integer", math.type(back.id))
        assert.are.equal("integer", math.type(back.big))
        assert.are.equal("float", math.type(back.whole))
    end)

    it("keeps empty arrays made with json.array as []", function()
        local res = response.json(200, { status = "success", projects = json.array {} })
        assert.are.equal('{"projects":[],"status":"success"}', res.body)
    end)

    it("encodes an unmarked empty table as {}", function()
        assert.are.equal('{"settings":{}}', response.json(200, { settings = {} }).body)
    end)

    it("keeps decoded empty arrays and objects apart on the way back out", function()
        local v = json.decode('{"a":[],"o":{},"n":null}')
        assert.are.equal('{"a":[],"n":null,"o":{}}', response.json(200, v).body)
    end)

    it("merges extra headers, which may override the defaults", function()
        local res = response.json(429, { error = "slow down" }, { ["retry-after"] = "12" })
        assert.are.equal("12", res.headers["retry-after"])
        assert.are.equal("application/json", res.headers["content-type"])
        local res2 = response.json(200, {}, { ["content-type"] = "application/problem+json" })
        assert.are.equal("application/problem+json", res2.headers["content-type"])
    end)

    it("does not share the headers table between responses", function()
        local a = response.json(200, {})
        a.headers.x = "1"
        assert.is_nil(response.json(200, {}).headers.x)
    end)

    it("raises (a bug, not a client error) when the body cannot be encoded", function()
        local ok, err = pcall(response.json, 200, { f = print })
        assert.is_false(ok)
        assert.matches("response body is not encodable", err, 1, true)
        assert.has_error(function() response.json(200, { x = 0 / 0 }) end)
        assert.has_error(function() response.json(200, { [1] = 1, [3] = 3 }) end)
    end)

    it("error() builds the {error, request_id} body", function()
        local res = response.error(404, "Not found", "req-1")
        assert.are.equal(404, res.status)
        assert.are.equal('{"error":"Not found","request_id":"req-1"}', res.body)
        assert.are.equal("application/json", res.headers["content-type"])
        local with_headers = response.error(405, "Method not allowed", "r", { allow = "GET, POST" })
        assert.are.equal("GET, POST", with_headers.headers.allow)
    end)
end)
