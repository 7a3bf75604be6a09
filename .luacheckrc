-- luacheck configuration (`make lint` runs `luacheck -q lualib scripts spec`).
std = "lua54"
globals = {}
max_line_length = 120

-- lualib/ and scripts/ run in the host's sandbox (host/lua/prelude.lua): no io,
-- print, load, dofile, debug, package, coroutine, and only os.time/clock/date.
-- Linting them against that environment catches what would fail at load time.
stds.aicode_sandbox = {
    read_globals = {
        "assert", "error", "ipairs", "next", "pairs", "pcall", "xpcall", "select", "tonumber",
        "tostring", "type", "rawequal", "rawget", "rawlen", "rawset", "setmetatable", "getmetatable",
        "_VERSION", "require",
        string = { fields = {
            "byte", "char", "find", "format", "gmatch", "gsub", "len", "lower", "match", "pack",
            "packsize", "rep", "reverse", "sub", "unpack", "upper",
        } },
        table = { fields = { "concat", "insert", "move", "pack", "remove", "sort", "unpack" } },
        math = { fields = {
            "abs", "ceil", "cos", "deg", "exp", "floor", "fmod", "huge", "log", "max", "maxinteger",
            "min", "mininteger", "modf", "pi", "rad", "random", "randomseed", "sin", "sqrt", "tan",
            "tointeger", "type", "ult", "acos", "asin", "atan",
        } },
        utf8 = { fields = { "char", "charpattern", "codepoint", "codes", "len", "offset" } },
        os = { fields = { "time", "clock", "date" } },
    },
}

files["lualib"] = { std = "aicode_sandbox" }
files["scripts"] = { std = "aicode_sandbox" }

-- busted specs and their helpers run under plain lua5.4 with busted's globals.
files["spec"] = { std = "+busted" }
files[".busted"] = { std = "lua54" }
files["*.rockspec"] = { std = "lua54", globals = {
    "rockspec_format", "package", "version", "source", "description", "dependencies",
    "test_dependencies", "build", "test",
} }
