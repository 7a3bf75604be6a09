/*
 * Unit tests for host.json (host/src/l_json.c): the C helpers directly, and the Lua API
 * through small chunks run with luaL_dostring.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <lualib.h>

#include "host/common.h"
#include "host/json.h"
#include "tap.h"

#define XORSHIFT_SEED 88172645463325252ULL /* the float test draws doubles from it */
#include "xorshift.h"

static lua_State *L;

/* Runs `chunk`, which returns true on success or false plus an explanation. */
static void lua_check(const char *name, const char *chunk)
{
    int pass;

    if (luaL_dostring(L, chunk) != LUA_OK) {
        ok(0, "%s", name);
        printf("#   error: %s\n", lua_tostring(L, -1));
    } else {
        pass = lua_gettop(L) >= 1 && lua_toboolean(L, 1);
        ok(pass, "%s", name);
        if (!pass && lua_gettop(L) >= 2)
            printf("#   %s\n", luaL_tolstring(L, 2, NULL));
    }
    lua_settop(L, 0);
}

/* Evaluates the Lua expression `expr`, encodes it with the C helper, compares the text. */
static void check_encode(const char *expr, const char *want)
{
    char chunk[512], err[256] = "";
    const char *got = NULL;
    size_t len = 0;
    int rc = -1;

    snprintf(chunk, sizeof(chunk), "return %s", expr);
    if (luaL_dostring(L, chunk) == LUA_OK) {
        rc = host_json_push_encoded(L, 1, err, sizeof(err));
        if (rc == 0)
            got = lua_tolstring(L, -1, &len);
    } else {
        snprintf(err, sizeof(err), "%s", lua_tostring(L, -1));
    }
    ok(rc == 0 && got != NULL && len == strlen(want) && memcmp(got, want, len) == 0,
       "encode %s -> %s", expr, want);
    if (rc != 0)
        printf("#   error: %s\n", err);
    else if (got != NULL && strcmp(got, want) != 0)
        printf("#   got: %s\n", got);
    lua_settop(L, 0);
}

/* Encoding `expr` must fail, leave the stack alone and report a message containing `want`. */
static void check_encode_err(const char *expr, const char *want)
{
    char chunk[512], err[256] = "";
    int rc = 0, top = -1;

    snprintf(chunk, sizeof(chunk), "return %s", expr);
    if (luaL_dostring(L, chunk) == LUA_OK) {
        rc = host_json_push_encoded(L, 1, err, sizeof(err));
        top = lua_gettop(L);
    }
    ok(rc == -1 && top == 1 && strstr(err, want) != NULL, "encode %s fails: %s", expr, want);
    if (rc != -1 || strstr(err, want) == NULL)
        printf("#   rc=%d err=%s\n", rc, err);
    lua_settop(L, 0);
}

/* Decoding `text` (length `len`) must fail with a message containing `want`. */
static void check_decode_err_len(const char *name, const char *text, size_t len, const char *want)
{
    char err[256] = "";
    int rc = host_json_push_decoded(L, text, len, err, sizeof(err));

    ok(rc == -1 && lua_gettop(L) == 0 && strstr(err, want) != NULL, "decode %s fails: %s", name,
       err);
    lua_settop(L, 0);
}

static void check_decode_err(const char *text, const char *want)
{
    char name[64];
    size_t i;

    /* The text becomes the TAP line's name: keep it on one printable line. */
    for (i = 0; i < sizeof(name) - 1 && text[i] != '\0'; i++)
        name[i] = (text[i] >= 0x20 && text[i] < 0x7f) ? text[i] : '?';
    name[i] = '\0';
    check_decode_err_len(name, text, strlen(text), want);
}

/* Decoding then re-encoding `text` must reproduce it byte for byte. */
static void check_roundtrip(const char *text)
{
    char err[256] = "";
    const char *got = NULL;
    int rc = host_json_push_decoded(L, text, strlen(text), err, sizeof(err));

    if (rc == 0 && (rc = host_json_push_encoded(L, 1, err, sizeof(err))) == 0)
        got = lua_tostring(L, -1);
    ok(got != NULL && strcmp(got, text) == 0, "round trip %s", text);
    if (got == NULL)
        printf("#   error: %s\n", err);
    else if (strcmp(got, text) != 0)
        printf("#   got: %s\n", got);
    lua_settop(L, 0);
}

static void test_numbers(void)
{
    lua_check("42 decodes to integer 42", "local v = json.decode('42') "
                                          "return math.type(v) == 'integer' and v == 42");
    check_encode("42", "42");
    check_encode("json.decode('42')", "42");
    check_encode("-7", "-7");
    check_encode("0", "0");
    lua_check("2^53+1 decodes exactly", "return json.decode('9007199254740993') == "
                                        "9007199254740993");
    check_roundtrip("9007199254740993");
    check_roundtrip("-9223372036854775808");
    check_roundtrip("9223372036854775807");
    check_encode("math.mininteger", "-9223372036854775808");
    lua_check("int64 min decodes to math.mininteger",
              "return json.decode('-9223372036854775808') == math.mininteger");
    check_decode_err("1e400", "invalid JSON");
    check_decode_err("-1e400", "invalid JSON");
    check_decode_err("9223372036854775808", "integer");
    check_decode_err("-9223372036854775809", "integer");
    check_decode_err("[1, 99999999999999999999999]", "integer");

    check_encode("0.1", "0.1");
    check_encode("1.5", "1.5");
    check_encode("3.0", "3.0");
    check_encode("-0.0", "-0.0");
    check_encode("1e300", "1e+300");
    check_encode("2^63", "9.223372036854776e+18");
    check_encode("123456789.125", "123456789.125");
    lua_check("0.1, 1.5 and 3.0 decode as floats",
              "for _, s in ipairs{'0.1', '1.5', '3.0'} do "
              "  local v = json.decode(s) "
              "  if math.type(v) ~= 'float' or v ~= tonumber(s) then return false, s end "
              "end return true");
    lua_check("floats round-trip exactly",
              "for _, x in ipairs{0.1, 1.5, 3.0, 1/3, 2/3, 1e-310, 5e-324, 1.7976931348623157e308,"
              "  -123.456, 1e21, 1e15, 0.30000000000000004, 2^63} do "
              "  local s = json.encode(x) local y = json.decode(s) "
              "  if y ~= x or math.type(y) ~= 'float' then return false, s end "
              "end return true");
    check_encode_err("0/0", "cannot encode NaN or Infinity");
    check_encode_err("math.huge", "cannot encode NaN or Infinity");
    check_encode_err("{-math.huge}", "cannot encode NaN or Infinity");
}

static void test_containers(void)
{
    check_roundtrip("[]");
    check_roundtrip("{}");
    check_roundtrip("{\"a\":[],\"b\":{},\"c\":[{}],\"d\":[[[]]],\"e\":{\"f\":{}}}");
    check_roundtrip("[1,\"two\",true,false,null,{\"x\":[1.5]}]");
    lua_check("decoded [] is an array, {} is not", "return json.is_array(json.decode('[]')) and "
                                                   "not json.is_array(json.decode('{}'))");
    lua_check("decoded values are plain tables",
              "local t = json.decode('[1,2,3]') return #t == 3 and t[3] == 3");
    check_encode("{1, 2, 3}", "[1,2,3]");
    check_encode("{'a', {1, {x = true}}, false}", "[\"a\",[1,{\"x\":true}],false]");
    check_encode("{}", "{}");
    check_encode("json.array()", "[]");
    check_encode("json.object()", "{}");
    check_encode("json.array({1, 2})", "[1,2]");
    check_encode("{json.array(), json.object(), {}}", "[[],{},{}]");
    lua_check("json.array returns its argument marked",
              "local t = {} return json.array(t) == t and json.is_array(t) and "
              "not json.is_array({}) and not json.is_array(5) and not json.is_array()");
    lua_check("edited decoded values encode",
              "local t = json.decode('{\"a\":[]}') t.a[1] = 'x' t.b = json.null "
              "return json.encode(t) == '{\"a\":[\"x\"],\"b\":null}'");
    check_encode_err("json.object({1})", "non-string key");
    check_encode_err("{1, 2, nil, 4}", "mixed or sparse");
    check_encode_err("{1, 2, x = 3}", "mixed or sparse");
    check_encode_err("{x = 3, 1}", "mixed or sparse");
    check_encode_err("{[0] = 1}", "mixed or sparse");
    check_encode_err("{[2] = 1}", "mixed or sparse");
    check_encode_err("{[1.5] = 1}", "mixed or sparse");
    check_encode_err("{[true] = 1}", "mixed or sparse");
    check_encode_err("{a = {[{}] = 1}}", "mixed or sparse");
}

static void test_null(void)
{
    check_roundtrip("{\"a\":null}");
    check_roundtrip("[null,1,null]");
    check_roundtrip("null");
    lua_check("null decodes to the shared sentinel",
              "return json.decode('{\"a\":null}').a == json.null and "
              "json.decode('null') == json.null and type(json.null) == 'userdata'");
    check_encode("nil", "null");
    check_encode("json.null", "null");
    lua_check("json.encode() gives null", "return json.encode() == 'null'");

    host_push_null(L);
    ok(host_is_null(L, -1), "host_push_null pushes the sentinel");
    lua_getglobal(L, "json");
    lua_getfield(L, -1, "null");
    ok(lua_rawequal(L, -1, -3), "json.null is host_null_sentinel");
    lua_settop(L, 0);
}

static void test_invalid(void)
{
    check_decode_err("{\"a\":1,\"a\":2}", "duplicate");
    check_decode_err("{\"a\":{\"b\":1,\"b\":1}}", "duplicate");
    check_decode_err("[1,]", "invalid JSON");
    check_decode_err("{\"a\":1,}", "invalid JSON");
    check_decode_err("{'a':1}", "invalid JSON");
    check_decode_err("'a'", "invalid JSON");
    check_decode_err("NaN", "invalid JSON");
    check_decode_err("[Infinity]", "invalid JSON");
    check_decode_err("nul", "invalid JSON");
    check_decode_err("hello", "invalid JSON");
    check_decode_err("", "invalid JSON");
    check_decode_err("[1 2]", "invalid JSON");
    check_decode_err("1 2", "invalid JSON");
    check_decode_err("{\"a\"}", "invalid JSON");
    check_decode_err("\"\\u0000\"", "invalid JSON");
    check_decode_err_len("embedded NUL", "[1]\0", 4, "invalid JSON");
    check_decode_err("\"\\ud800\"", "invalid JSON");
    check_decode_err("\"\xff\"", "invalid JSON");
    check_decode_err("\"\xc0\xaf\"", "invalid JSON");
    check_decode_err("\"a\nb\"", "invalid JSON");

    lua_check("decode errors come back as nil, err",
              "local v, err = json.decode('[1,]') "
              "return v == nil and type(err) == 'string' and err:find('line 1') ~= nil, err");
    lua_check("error messages quote at most 80 chars of input and are ASCII",
              "for _, s in ipairs{'[' .. string.rep('x', 1000), '[\"' .. string.rep('y', 1000), "
              "  string.rep('z', 1000), '[\"\\255' .. string.rep('w', 500) .. '\"]'} do "
              "  local v, err = json.decode(s) "
              "  if v ~= nil or #err > 160 or err:find('[^\\32-\\126]') or "
              "     err:find(string.rep(s:sub(3, 3), 81), 1, true) then return false, err end "
              "end return true");
    lua_check("decode of a non-string raises",
              "return not pcall(json.decode, {}) and not pcall(json.decode)");

    {
        size_t n = HOST_JSON_MAX_INPUT + 1;
        char *big = malloc(n);

        memset(big, ' ', n);
        big[0] = '1';
        check_decode_err_len("input over 16 MiB", big, n, "too large");
        ok(host_json_push_decoded(L, big, n - 1, NULL, 0) == 0 && lua_tointeger(L, -1) == 1,
           "input of exactly 16 MiB is accepted");
        lua_settop(L, 0);
        free(big);
    }
}

static void test_depth(void)
{
    lua_check("decode depth 64 ok, 65 rejected",
              "local a = json.decode(string.rep('[', 64) .. string.rep(']', 64)) "
              "local b, err = json.decode(string.rep('[', 65) .. string.rep(']', 65)) "
              "local c, err2 = json.decode(string.rep('{\"a\":', 65) .. '1' .. "
              "  string.rep('}', 65)) "
              "return a ~= nil and b == nil and err:find('too deep') and c == nil and "
              "  err2:find('too deep'), err");
    lua_check("decode far beyond jansson's own limit is rejected cleanly",
              "local v, err = json.decode(string.rep('[', 100000)) "
              "return v == nil and err:find('too deep') ~= nil, err");
    lua_check("encode depth 64 ok, 65 rejected",
              "local function nest(n) local t = {} for _ = 2, n do t = {t} end return t end "
              "local s = json.encode(nest(64)) "
              "local v, err = json.encode(nest(65)) "
              "return s == string.rep('[', 63) .. '{}' .. string.rep(']', 63) and v == nil and "
              "  err == 'nesting too deep', err");
    lua_check("decoded depth 64 re-encodes identically",
              "local s = string.rep('[', 64) .. string.rep(']', 64) "
              "return json.encode(json.decode(s)) == s");
    lua_check("cyclic tables are rejected",
              "local t = {} t[1] = t local u = {} u.self = {u} "
              "local a, e1 = json.encode(t) local b, e2 = json.encode(u) "
              "return a == nil and e1 == 'nesting too deep' and b == nil and "
              "  e2 == 'nesting too deep'");
}

static void test_strings(void)
{
    check_encode("{b = 1, a = 2, c = 3, aa = 4, A = 5, ['']= 6}",
                 "{\"\":6,\"A\":5,\"a\":2,\"aa\":4,\"b\":1,\"c\":3}");
    check_encode("{['\\u{e9}'] = 1, z = 2, ['a\\0b'] = 3, a = 4, ab = 5}",
                 "{\"a\":4,\"a\\u0000b\":3,\"ab\":5,\"z\":2,\"\xc3\xa9\":1}");
    check_encode("'a\"b\\\\c/d'", "\"a\\\"b\\\\c/d\"");
    check_encode("'\\n\\t\\r\\b\\f\\1\\31\\0\\127'",
                 "\"\\n\\t\\r\\b\\f\\u0001\\u001f\\u0000\x7f\"");
    check_encode("'x\\u{2028}y\\u{2029}z'", "\"x\\u2028y\\u2029z\"");
    check_encode("'\\u{e9}\\u{20ac}\\u{1f600}\\u{2027}\\u{202a}'",
                 "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xe2\x80\xa7\xe2\x80\xaa\"");
    check_encode("''", "\"\"");
    check_encode("{['k\\n'] = 'v\\t'}", "{\"k\\n\":\"v\\t\"}");
    lua_check("escaped strings decode back", "local s = 'q\"b\\\\s/\\n\\t\\1\\u{2028}\\u{e9}' "
                                             "return json.decode(json.encode(s)) == s");
    check_roundtrip("\"a\\\\b\\\"c\\u0001\"");
    lua_check("\\u escapes decode to UTF-8",
              "return json.decode('\"\\\\u00e9\\\\ud83d\\\\ude00\"') == '\\u{e9}\\u{1f600}'");

    check_encode_err("'\\255'", "invalid UTF-8 in string");
    check_encode_err("'abc\\xc0\\xaf'", "invalid UTF-8 in string");
    check_encode_err("'\\xed\\xa0\\x80'", "invalid UTF-8 in string");
    check_encode_err("'\\xe2\\x82'", "invalid UTF-8 in string");
    check_encode_err("'\\xf4\\x90\\x80\\x80'", "invalid UTF-8 in string");
    check_encode_err("'\\xe0\\x80\\xaf'", "invalid UTF-8 in string");
    check_encode_err("'\\x80'", "invalid UTF-8 in string");
    check_encode_err("{['\\xff'] = 1}", "invalid UTF-8 in string");
    check_encode_err("{{ok = {'\\xc3'}}}", "invalid UTF-8 in string");

    /* The fast paths (8-byte scan, run copies) against a plain per-byte escaper: every
     * ASCII byte, UTF-8 sequences and an invalid byte at every position of strings up to
     * 25 bytes, so each lands on and across every 8-byte boundary. */
    lua_check("string escaping matches a per-byte reference at every position",
              "local named = {[8] = '\\\\b', [9] = '\\\\t', [10] = '\\\\n', [12] = '\\\\f', "
              "  [13] = '\\\\r', [34] = '\\\\\"', [92] = '\\\\\\\\'} "
              "local function ref(s) "
              "  local out = {} "
              "  for _, c in utf8.codes(s) do "
              "    if named[c] then out[#out + 1] = named[c] "
              "    elseif c < 32 or c == 0x2028 or c == 0x2029 then "
              "      out[#out + 1] = string.format('\\\\u%04x', c) "
              "    else out[#out + 1] = utf8.char(c) end "
              "  end "
              "  return '\"' .. table.concat(out) .. '\"' "
              "end "
              "local inserts = {'\\u{e9}', '\\u{20ac}', '\\u{1f600}', '\\u{2028}', '\\u{2029}'} "
              "for b = 0, 127 do inserts[#inserts + 1] = string.char(b) end "
              "for len = 0, 25 do "
              "  local base = string.rep('abcdefgh', 6):sub(1, len) "
              "  for pos = 0, len do "
              "    for _, ins in ipairs(inserts) do "
              "      local s = base:sub(1, pos) .. ins .. base:sub(pos + 1) "
              "      if json.encode(s) ~= ref(s) then return false, ('%q'):format(s) end "
              "    end "
              "    local bad = base:sub(1, pos) .. '\\xff' .. base:sub(pos + 1) "
              "    local v, err = json.encode(bad) "
              "    if v ~= nil or err ~= 'invalid UTF-8 in string' then return false, bad end "
              "  end "
              "end "
              "return true");
}

static void test_types(void)
{
    check_encode("{t = true, f = false}", "{\"f\":false,\"t\":true}");
    check_encode_err("print", "cannot encode value of type function");
    check_encode_err("{f = print}", "cannot encode value of type function");
    check_encode_err("coroutine.create(print)", "cannot encode value of type thread");
    check_encode_err("io.stdout", "cannot encode value of type userdata");
    check_encode("setmetatable({a = 1}, {__index = function() error('x') end, "
                 "__pairs = function() error('y') end})",
                 "{\"a\":1}");

    {
        char err[256] = "";
        static char other;

        lua_pushlightuserdata(L, &other);
        ok(host_json_push_encoded(L, -1, err, sizeof(err)) == -1 &&
               strstr(err, "type userdata") != NULL && lua_gettop(L) == 1,
           "light userdata other than null is rejected");
        lua_settop(L, 0);
    }
}

static void test_big(void)
{
    lua_check("object with 1000 keys encodes sorted and round-trips",
              "local t = {} "
              "for i = 1000, 1, -1 do t[string.format('k%04d', i)] = i end "
              "local s = json.encode(t) "
              "if s:sub(1, 19) ~= '{\"k0001\":1,\"k0002\":' then return false, s:sub(1, 40) end "
              "local last = 0 "
              "for k in s:gmatch('\"k(%d+)\"') do "
              "  if tonumber(k) ~= last + 1 then return false, k end last = last + 1 "
              "end "
              "local d = json.decode(s) local n = 0 "
              "for k, v in pairs(d) do n = n + 1 if t[k] ~= v then return false, k end end "
              "return last == 1000 and n == 1000 and json.encode(d) == s");
    lua_check("large nested document round-trips",
              "local a = {} "
              "for i = 1, 20000 do a[i] = {id = i, name = 'n' .. i, tags = {'x', 'y'}, "
              "  score = i / 7, obj = {z = {}, y = json.array()}} end "
              "local s = json.encode(a) "
              "return #s > 1000000 and json.encode(json.decode(s)) == s");
    lua_check("wide objects nested inside wide objects",
              "local t = {} "
              "for i = 1, 300 do local u = {} for j = 1, 300 do u['k' .. j] = j end "
              "  t['o' .. i] = u end "
              "local s = json.encode(t) local d = json.decode(s) "
              "return d.o300.k300 == 300 and json.encode(d) == s");
}

/* The float encoder before its fast path: the shortest of %.15g/%.16g/%.17g that reads
 * back, ".0" added to integral values. */
static void ref_float(double d, char *tmp, size_t cap)
{
    int n = 0, prec;

    for (prec = 15; prec <= 17; prec++) {
        n = snprintf(tmp, cap, "%.*g", prec, d);
        if (prec == 17 || strtod(tmp, NULL) == d)
            break;
    }
    if (strpbrk(tmp, ".eni") == NULL) {
        tmp[n++] = '.';
        tmp[n++] = '0';
        tmp[n] = '\0';
    }
}

/* Floats print exactly as before: values with up to 3 decimals (the fast path) on both
 * sides of its bounds, and arbitrary doubles. */
static void test_float_text(void)
{
    static const double edges[] = {
        0.001,
        0.0009,
        0.0011,
        0.1,
        0.5,
        0.999,
        1.0,
        1.5,
        2.25,
        10.0,
        100.001,
        1e11,
        1e12,
        1e12 - 0.001,
        1e12 + 0.001,
        999999999999.999,
        123456789012.345,
        1795770363.919,
        1795770363.9,
        1795770363.0,
        0.1 + 0.2,
        1.0 / 3,
        4503599627370496.0,
        1e15,
        1e16,
        5e-324,
        0.0,
        -0.0,
        -0.001,
        -1795770363.919,
        -0.5,
        2.675,
        1.005,
        0.0005,
        0.0015,
    };
    char want[64], err[64];
    int bad = 0;
    size_t nedges = sizeof(edges) / sizeof(edges[0]);

    for (size_t i = 0; i < nedges + 40000 && bad < 5; i++) {
        double d;
        uint64_t r = xorshift_next();

        if (i < nedges)
            d = edges[i];
        else if (i % 4 == 0) /* k / 1000 for k of 1..16 digits */
            d = (double)(long long)(r % (uint64_t)pow(10, (double)(1 + r % 16))) / 1000.0;
        else if (i % 4 == 1) /* k / 100, k / 10, k */
            d = (double)(long long)(r >> 20) / (double)(r % 3 == 0 ? 1 : r % 3 == 1 ? 10 : 100);
        else if (i % 4 == 2) /* near the fast path's bounds */
            d = (r % 2 ? 1e-3 : 1e12) *
                (1.0 + ((double)(r >> 11) / 9007199254740992.0 - 0.5) * 1e-3);
        else { /* any finite double */
            memcpy(&d, &r, sizeof(d));
            if (!isfinite(d))
                continue;
        }
        if (r % 5 == 0)
            d = -d;
        ref_float(d, want, sizeof(want));
        lua_pushnumber(L, d);
        if (host_json_push_encoded(L, -1, err, sizeof(err)) != 0 ||
            strcmp(lua_tostring(L, -1), want) != 0) {
            bad++;
            printf("#   %.17g: got %s, want %s\n", d, lua_tostring(L, -1), want);
        }
        lua_settop(L, 0);
    }
    ok(bad == 0, "floats encode as the shortest of %%.15g/%%.16g/%%.17g that reads back");
}

static void test_key_order(void)
{
    /* Objects of 0..60 keys (both sides of the insertion-sort threshold), with keys that
     * are prefixes of each other, share long prefixes or hold non-ASCII bytes. */
    lua_check("object keys come out in bytewise order for every size",
              "local seed = 7 "
              "local function rnd(n) seed = (seed * 1103515245 + 12345) % 2147483648 "
              "  return seed % n end "
              "local alphabet = {'a', 'b', 'ab', 'a ', 'Z', '_', '0', '\\u{e9}', 'long-prefix-'} "
              "for size = 0, 60 do "
              "  for _ = 1, 20 do "
              "    local t, keys = {}, {} "
              "    while #keys < size do "
              "      local k = '' "
              "      for _ = 1, 1 + rnd(4) do k = k .. alphabet[1 + rnd(#alphabet)] end "
              "      if t[k] == nil then t[k] = #keys + 1 keys[#keys + 1] = k end "
              "    end "
              "    table.sort(keys) "
              "    local parts = {} "
              "    for i, k in ipairs(keys) do parts[i] = json.encode(k) .. ':' .. t[k] end "
              "    local want = size == 0 and '{}' or '{' .. table.concat(parts, ',') .. '}' "
              "    local got = json.encode(t) "
              "    if got ~= want then return false, got .. ' ~= ' .. want end "
              "  end "
              "end "
              "return true");
    /* The key-order memo: rows with the same keys reuse the previous row's order, rows
     * whose keys differ (or come in another traversal order) are sorted afresh. */
    lua_check(
        "arrays of similar and differing rows encode as each row alone",
        "local function ref(t) "
        "  local keys = {} for k in pairs(t) do keys[#keys + 1] = k end "
        "  table.sort(keys) "
        "  local parts = {} "
        "  for i, k in ipairs(keys) do parts[i] = json.encode(k) .. ':' .. json.encode(t[k]) end "
        "  return '{' .. table.concat(parts, ',') .. '}' "
        "end "
        "local names = {'id', 'user_id', 'repo_url', 'repo_name', 'repo_owner', 'name', "
        "  'description', 'is_active', 'settings', 'created_at', 'updated_at', 'task_count', "
        "  'completed_tasks', 'active_tasks', 'a', 'b', 'zz', 'k9', 'k10', 'x_', 'x', 'y', "
        "  'y2', 'q', 'r', 's', 't', 'u', 'v', 'w', 'm', 'n', 'o', 'p'} "
        "local rows = {} "
        "for i = 1, 200 do "
        "  local row = {} "
        "  local n = (i % 7 == 0) and (i % 34 + 1) or 14 "
        "  local first = (i % 5 == 0) and 3 or 1 "
        "  for j = first, first + n - 1 do row[names[(j - 1) % #names + 1]] = i * 100 + j end "
        "  if i % 11 == 0 then row.settings = {b = 1, a = {z = 1, y = 2}} end "
        "  rows[i] = row "
        "end "
        "local parts = {} "
        "for i, row in ipairs(rows) do "
        "  local alone = json.encode(row) "
        "  if row.settings == nil and alone ~= ref(row) then return false, alone end "
        "  parts[i] = alone "
        "end "
        "local all = json.encode(rows) "
        "if all ~= '[' .. table.concat(parts, ',') .. ']' then return false, all end "
        "local wrapped = json.encode({status = 'success', projects = rows}) "
        "return wrapped == '{\"projects\":' .. all .. ',\"status\":\"success\"}'");
    lua_check("rows with the same keys inserted in other orders still sort",
              "local keys = {'m', 'b', 'z', 'a', 'q', 'c', 'y'} "
              "local rows = {} "
              "for i = 1, 50 do "
              "  local t = {} "
              "  for j = 0, #keys - 1 do local k = keys[(i + j * 3) % #keys + 1] t[k] = j end "
              "  if i % 3 == 0 then t.extra = 1 t.extra = nil end "
              "  rows[i] = t "
              "end "
              "for _, s in ipairs({json.encode(rows)}) do "
              "  for obj in s:gmatch('{[^}]*}') do "
              "    local last = '' "
              "    for k in obj:gmatch('\"(%a+)\":') do "
              "      if k <= last then return false, obj end last = k "
              "    end "
              "  end "
              "end "
              "return true");
}

static void test_c_api(void)

{
    char err[256] = "";
    luaL_Buffer b;
    const char *s;
    int rc;

    rc = host_json_push_decoded(L, "{\"a\":[1,2]}", 11, err, sizeof(err));
    ok(rc == 0 && lua_gettop(L) == 1 && lua_istable(L, 1), "host_json_push_decoded pushes one");
    lua_getfield(L, 1, "a");
    ok(lua_getmetatable(L, -1) && (luaL_getmetatable(L, HOST_JSON_ARRAY_MT), 1) &&
           lua_rawequal(L, -1, -2),
       "decoded arrays carry the HOST_JSON_ARRAY_MT metatable");
    lua_settop(L, 1);
    ok(lua_getmetatable(L, 1) && (luaL_getmetatable(L, HOST_JSON_OBJECT_MT), 1) &&
           lua_rawequal(L, -1, -2),
       "decoded objects carry the HOST_JSON_OBJECT_MT metatable");
    lua_settop(L, 1);

    lua_pushstring(L, "filler");
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "data: ");
    rc = host_json_encode_value(L, 1, &b, err, sizeof(err));
    luaL_addstring(&b, "\n");
    luaL_pushresult(&b);
    s = lua_tostring(L, -1);
    ok(rc == 0 && strcmp(s, "data: {\"a\":[1,2]}\n") == 0 && lua_gettop(L) == 3,
       "host_json_encode_value appends to a luaL_Buffer");
    lua_settop(L, 0);

    lua_pushcfunction(L, lua_error); /* not encodable */
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "x");
    rc = host_json_encode_value(L, 1, &b, err, sizeof(err));
    luaL_pushresult(&b);
    ok(rc == -1 && strcmp(lua_tostring(L, -1), "x") == 0 && lua_gettop(L) == 2 &&
           strstr(err, "function") != NULL,
       "host_json_encode_value appends nothing on error");
    lua_settop(L, 0);

    ok(host_json_push_decoded(L, "[", 1, NULL, 0) == -1 && lua_gettop(L) == 0,
       "host_json_push_decoded accepts a NULL err buffer");
    rc = host_json_push_decoded(L, "[1,", 3, err, 16);
    ok(rc == -1 && strlen(err) == 15, "error message is truncated to errlen");

    lua_newtable(L);
    host_json_set_array_mt(L, -1);
    lua_newtable(L);
    host_json_set_object_mt(L, -1);
    lua_newtable(L);
    lua_pushinteger(L, 1);
    lua_rawseti(L, -2, 1);
    host_json_set_object_mt(L, 3);
    ok(host_json_push_encoded(L, 1, err, sizeof(err)) == 0 &&
           strcmp(lua_tostring(L, -1), "[]") == 0,
       "host_json_set_array_mt makes an empty table encode as []");
    lua_pop(L, 1);
    ok(host_json_push_encoded(L, 2, err, sizeof(err)) == 0 &&
           strcmp(lua_tostring(L, -1), "{}") == 0,
       "host_json_set_object_mt makes an empty table encode as {}");
    lua_pop(L, 1);
    ok(host_json_push_encoded(L, -1, err, sizeof(err)) == -1 && lua_gettop(L) == 3,
       "object-marked table with an integer key is rejected");
    lua_settop(L, 0);

    host_json_marker_mt(L, HOST_JSON_ARRAY_MT);
    luaL_getmetatable(L, HOST_JSON_ARRAY_MT);
    ok(lua_istable(L, -1) && lua_rawequal(L, -1, -2), "host_json_marker_mt pushes the marker");
    lua_getfield(L, -1, "__name");
    ok(lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), HOST_JSON_ARRAY_MT) == 0,
       "marker metatable has a __name");
    lua_settop(L, 0);
}

static void test_fresh_state(void)
{
    /* The C helpers must work on a state where host_open_json never ran. */
    lua_State *L2 = luaL_newstate();
    char err[64];
    int rc = host_json_push_decoded(L2, "[{}]", 4, err, sizeof(err));

    if (rc == 0)
        rc = host_json_push_encoded(L2, -1, err, sizeof(err));
    ok(rc == 0 && strcmp(lua_tostring(L2, -1), "[{}]") == 0, "helpers work without host_open_json");
    lua_close(L2);
}

/* An allocator that refuses any single block over `max_block` bytes: while an encode runs,
 * the only Lua allocations are stack reallocations, so this caps the stack. */
static size_t max_block = (size_t)-1;

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    (void)osize;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    if (nsize > max_block)
        return NULL;
    return realloc(ptr, nsize);
}

/* The encoder keeps an object's values on the stack next to its keys; when the stack
 * cannot hold both it starts over keeping keys only (one slot per key, as it always
 * did), so a short stack gives the same text, not an error. */
static void test_stack_fallback(void)
{
    lua_State *LS = lua_newstate(capped_alloc, NULL);
    const char *s, *want;
    size_t n, wantn;
    char *copy;

    luaL_openlibs(LS);
    host_open_json(LS);
    lua_setglobal(LS, "json");
    if (luaL_dostring(LS, "t = {} for i = 1, 5000 do t['k' .. i] = {i, 'v'} end "
                          "return json.encode(t)") != LUA_OK) {
        ok(0, "stack fallback setup: %s", lua_tostring(LS, -1));
        lua_close(LS);
        return;
    }
    want = lua_tolstring(LS, -1, &wantn);
    copy = malloc(wantn);
    memcpy(copy, want, wantn);
    lua_settop(LS, 0);
    lua_gc(LS, LUA_GCCOLLECT);
    /* Room for about 5000 stack slots plus the text, not for 10000 slots. */
    max_block = 16 * 7000 > wantn + 64 ? 16 * 7000 : wantn + 64;
    lua_getglobal(LS, "json");
    lua_getfield(LS, -1, "encode");
    lua_getglobal(LS, "t");
    int rc = lua_pcall(LS, 1, 2, 0);
    max_block = (size_t)-1;
    s = rc == LUA_OK ? lua_tolstring(LS, -2, &n) : NULL;
    ok(s != NULL && n == wantn && memcmp(s, copy, n) == 0,
       "an object too wide to keep its values on the stack encodes the same");
    if (s == NULL)
        printf("#   rc=%d %s\n", rc, lua_tostring(LS, -1));
    free(copy);
    lua_close(LS);
}

struct budget {
    size_t used, limit;
};

/* A Lua allocator with a ceiling, to make memory errors happen mid-decode/encode. */
static void *limited_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct budget *b = ud;
    size_t old = ptr != NULL ? osize : 0;
    void *p;

    if (nsize == 0) {
        free(ptr);
        b->used -= old;
        return NULL;
    }
    if (nsize > old && b->used + (nsize - old) > b->limit)
        return NULL;
    if ((p = realloc(ptr, nsize)) != NULL)
        b->used = b->used - old + nsize;
    return p;
}

/* Runs `chunk` (compiled with no limit) with only `headroom` bytes to spare; it must fail
 * with a memory error. valgrind then proves that nothing malloc'd outside Lua leaked. */
static void check_memory_error(lua_State *LM, struct budget *bud, const char *name,
                               const char *chunk, size_t headroom)
{
    int rc = luaL_loadstring(LM, chunk);

    bud->limit = bud->used + headroom;
    if (rc == LUA_OK)
        rc = lua_pcall(LM, 0, 1, 0);
    bud->limit = (size_t)-1;
    ok(rc == LUA_ERRMEM, "%s raises a memory error (rc=%d)", name, rc);
    lua_settop(LM, 0);
}

static void test_memory_errors(void)
{
    struct budget bud = {0, (size_t)-1};
    lua_State *LM = lua_newstate(limited_alloc, &bud);

    luaL_openlibs(LM);
    host_open_json(LM);
    lua_setglobal(LM, "json");
    if (luaL_dostring(LM, "doc = '[' .. string.rep('{\"a\":[1,2,\"xyz\"]},', 20000) .. '1]' "
                          "val = json.decode(doc)") != LUA_OK) {
        ok(0, "memory error setup: %s", lua_tostring(LM, -1));
        lua_close(LM);
        return;
    }
    lua_gc(LM, LUA_GCCOLLECT);
    check_memory_error(LM, &bud, "decode out of Lua memory", "return json.decode(doc)", 200000);
    check_memory_error(LM, &bud, "encode out of Lua memory", "return json.encode(val)", 20000);
    lua_gc(LM, LUA_GCCOLLECT);
    ok(luaL_dostring(LM, "return json.encode(json.decode(doc)) == doc") == LUA_OK &&
           lua_toboolean(LM, -1),
       "state still works after memory errors");
    lua_close(LM);
}

int main(void)
{
    L = luaL_newstate();
    luaL_openlibs(L);
    lua_newtable(L);
    host_open_json(L);
    lua_setfield(L, -2, "json");
    lua_setglobal(L, "host");
    if (luaL_dostring(L, "json = host.json") != LUA_OK)
        return 1;
    lua_settop(L, 0);

    test_numbers();
    test_containers();
    test_null();
    test_invalid();
    test_depth();
    test_strings();
    test_types();
    test_big();
    test_float_text();
    test_key_order();
    test_c_api();
    test_fresh_state();
    test_memory_errors();
    test_stack_fallback();

    lua_check("module table shape",
              "return type(json.decode) == 'function' and type(json.encode) == 'function' and "
              "type(json.array) == 'function' and type(json.object) == 'function' and "
              "type(json.is_array) == 'function' and json.null ~= nil");
    lua_close(L);
    return tap_done();
}
