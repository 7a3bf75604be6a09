-- host.json (host/src/l_json.c) through host_core.so: the same C code bin/aicode runs.
local helper = require "support.helper"

describe("host.json", function()
    local json = helper.core.json

    describe("decode", function()
        it("keeps integers as Lua integers across the int64 range", function()
            for _, case in ipairs({
                { "42", 42 }, { "-7", -7 }, { "0", 0 },
                { "9223372036854775807", math.maxinteger }, { "-9223372036854775808", math.mininteger },
            }) do
                local v = json.decode(case[1])
                assert.are.equal(case[2], v)
                assert.are.equal("integer", math.type(v), case[1])
            end
        end)

        it("decodes reals as floats", function()
            for _, s in ipairs({ "42.0", "1e2", "0.1", "-2.5E-3" }) do
                assert.are.equal("float", math.type(json.decode(s)), s)
            end
            assert.are.equal(0.1, json.decode("0.1"))
        end)

        it("keeps integers beyond 2^53 exact", function()
            assert.are.equal(9007199254740993, json.decode("9007199254740993"))
        end)

        it("marks arrays and objects, including empty ones", function()
            local a, o = json.decode("[]"), json.decode("{}")
            assert.is_true(json.is_array(a))
            assert.is_false(json.is_array(o))
            assert.is_false(json.is_array({}))
            assert.is_false(json.is_array("[]"))
            local nested = json.decode('{"list":[1,2,3],"obj":{"k":"v"}}')
            assert.is_true(json.is_array(nested.list))
            assert.are.equal(3, #nested.list)
            assert.are.equal("v", nested.obj.k)
        end)

        it("decodes null as the shared sentinel, in objects and arrays", function()
            assert.are.equal(json.null, json.decode("null"))
            assert.are.equal(json.null, json.decode('{"a":null}').a)
            local arr = json.decode("[1,null,3]")
            assert.are.equal(3, #arr)
            assert.are.equal(json.null, arr[2])
            assert.are.equal(helper.core.sqlite.null, json.null)
        end)

        it("decodes strings with escapes and surrogate pairs", function()
            assert.are.equal("é", json.decode('"\\u00e9"'))
            assert.are.equal("😀", json.decode('"\\ud83d\\ude00"'))
            assert.are.equal('a"b\\c/\n', json.decode('"a\\"b\\\\c\\/\\n"'))
        end)

        it("decodes booleans", function()
            assert.is_true(json.decode("true"))
            assert.is_false(json.decode("false"))
        end)

        it("returns nil and a message for invalid JSON", function()
            for _, s in ipairs({ "", "  ", "{", "[1,", "tru", "NaN", "Infinity", "{'a':1}", "[1,]", "01", "1 2" }) do
                local v, err = json.decode(s)
                assert.is_nil(v, s)
                assert.is_string(err, s)
                assert.matches("^invalid JSON", err)
            end
        end)

        it("rejects duplicate keys (parser-differential guard)", function()
            local v, err = json.decode('{"role":"user","role":"admin"}')
            assert.is_nil(v)
            assert.matches("duplicate object key", err, 1, true)
        end)

        it("rejects integers outside int64 and reals that overflow", function()
            local v, err = json.decode("9223372036854775808")
            assert.is_nil(v)
            assert.matches("too big integer", err, 1, true)
            local r, rerr = json.decode("1e400")
            assert.is_nil(r)
            assert.matches("overflow", rerr, 1, true)
        end)

        it("rejects \\u0000 in strings", function()
            local v, err = json.decode('"a\\u0000b"')
            assert.is_nil(v)
            assert.matches("\\u0000", err, 1, true)
        end)

        it("limits nesting to 64 levels", function()
            assert.is_table(json.decode(("["):rep(64) .. ("]"):rep(64)))
            local v, err = json.decode(("["):rep(65) .. ("]"):rep(65))
            assert.is_nil(v)
            assert.matches("too deep", err, 1, true)
        end)

        it("quotes at most 80 characters of the input in errors", function()
            local _, err = json.decode('"' .. ("x"):rep(500))
            assert.is_true(#err < 200)
        end)

        it("raises only for non-string input", function()
            assert.has_error(function() json.decode(nil) end)
            assert.has_error(function() json.decode({}) end)
        end)
    end)

    describe("encode", function()
        it("writes integers exactly and floats so they read back as floats", function()
            assert.are.equal("42", json.encode(42))
            assert.are.equal("9223372036854775807", json.encode(math.maxinteger))
            assert.are.equal("3.0", json.encode(3.0))
            assert.are.equal("0.1", json.encode(0.1))
            assert.are.equal("1e+300", json.encode(1e300))
            assert.are.equal("float", math.type(json.decode(json.encode(2.0 ^ 53))))
        end)

        it("encodes empty tables as {} unless marked as arrays", function()
            assert.are.equal("{}", json.encode({}))
            assert.are.equal("[]", json.encode(json.array {}))
            assert.are.equal("[]", json.encode(json.array()))
            assert.are.equal("{}", json.encode(json.object {}))
            assert.are.equal('{"a":[]}', json.encode({ a = json.array {} }))
        end)

        it("encodes sequences as arrays and string-keyed tables as sorted objects", function()
            assert.are.equal("[1,2,3]", json.encode({ 1, 2, 3 }))
            assert.are.equal('{"B":3,"a":2,"b":1}', json.encode({ b = 1, a = 2, B = 3 }))
        end)

        it("encodes holes in marked arrays as null", function()
            assert.are.equal("[1,null,3]", json.encode(json.array { 1, nil, 3 }))
        end)

        it("encodes null, nil and booleans", function()
            assert.are.equal("null", json.encode(json.null))
            assert.are.equal("null", json.encode(nil))
            assert.are.equal('{"a":null}', json.encode({ a = json.null }))
            assert.are.equal("[true,false]", json.encode({ true, false }))
        end)

        it("escapes quotes, backslashes, control characters and U+2028 but not /", function()
            assert.are.equal('"a/b\\"c\\\\\\n\\u2028"', json.encode('a/b"c\\\n\226\128\168'))
        end)

        it("returns nil and a message for values JSON cannot hold", function()
            local cyclic = {}
            cyclic.self = cyclic
            for name, v in pairs({
                nan = 0 / 0, inf = 1 / 0, ninf = -1 / 0, bad_utf8 = "\xff", func = print,
                sparse = { [1] = 1, [3] = 3 }, mixed = { 1, a = 2 }, cyclic = cyclic,
                non_string_key = { [true] = 1 }, co = coroutine.create(print),
            }) do
                local s, err = json.encode(v)
                assert.is_nil(s, name)
                assert.is_string(err, name)
            end
        end)

        it("never runs metamethods", function()
            local t = setmetatable({}, { __index = function() error("metamethod ran") end,
                __pairs = function() error("metamethod ran") end })
            assert.are.equal("{}", json.encode(t))
        end)
    end)

    describe("round trips", function()
        it("preserves documents exactly", function()
            for _, doc in ipairs({
                '{"a":[],"b":{},"c":null,"d":[1,2.5,"x",true,false,null],"e":{"f":{"g":[{}]}}}',
                "[]", "{}", "null", "0", "-1", "1.5", '"text"', '[[[]]]',
                '{"id":42,"ids":[9007199254740993,-9223372036854775808]}',
            }) do
                assert.are.equal(doc, json.encode(assert(json.decode(doc))))
            end
        end)

        it("preserves integer versus float through a round trip", function()
            local v = json.decode(json.encode({ i = 42, f = 42.0 }))
            assert.are.equal("integer", math.type(v.i))
            assert.are.equal("float", math.type(v.f))
        end)
    end)
end)
