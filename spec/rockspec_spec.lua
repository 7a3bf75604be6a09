-- aicode-dev-1.rockspec must list every lualib/ module, and only files that exist,
-- so `luarocks make` installs the whole Lua side.
local helper = require "support.helper"
local lfs = require "lfs"

local ROCKSPEC = "aicode-dev-1.rockspec"

local function load_rockspec()
    local env = {}
    local chunk = assert(loadfile(helper.ROOT .. "/" .. ROCKSPEC, "t", env))
    chunk()
    return env
end

-- Every *.lua below lualib/, relative to the repository root.
local function lualib_files()
    local files = {}
    local function walk(rel)
        for entry in lfs.dir(helper.ROOT .. "/" .. rel) do
            if entry:sub(1, 1) ~= "." then
                local path = rel .. "/" .. entry
                local mode = lfs.attributes(helper.ROOT .. "/" .. path, "mode")
                if mode == "directory" then
                    walk(path)
                elseif entry:match("%.lua$") then
                    files[#files + 1] = path
                end
            end
        end
    end
    walk("lualib")
    table.sort(files)
    return files
end

-- The module name the host's require gives a lualib file (init.lua names its directory).
local function module_name(path)
    return (path:gsub("^lualib/", ""):gsub("/init%.lua$", ""):gsub("%.lua$", ""):gsub("/", "."))
end

describe(ROCKSPEC, function()
    local spec = load_rockspec()

    it("is a rockspec_format 3.0 builtin build named after its file", function()
        assert.are.equal("3.0", spec.rockspec_format)
        assert.are.equal("builtin", spec.build.type)
        assert.are.equal(ROCKSPEC, spec.package .. "-" .. spec.version .. ".rockspec")
        assert.is_string(spec.source.url)
        assert.is_string(spec.description.summary)
    end)

    it("depends on nothing but Lua 5.4 (everything else comes from Debian)", function()
        assert.are.same({ "lua >= 5.4, < 5.5" }, spec.dependencies)
    end)

    it("lists every lualib/**/*.lua file under its module name", function()
        local listed = {}
        for name, path in pairs(spec.build.modules) do listed[path] = name end
        local missing = {}
        for _, path in ipairs(lualib_files()) do
            if listed[path] == nil then
                missing[#missing + 1] = path
            else
                assert.are.equal(module_name(path), listed[path], path)
            end
        end
        assert.are.same({}, missing)
    end)

    it("lists only files that exist", function()
        local absent = {}
        for name, path in pairs(spec.build.modules) do
            if lfs.attributes(helper.ROOT .. "/" .. path, "mode") ~= "file" then
                absent[#absent + 1] = name .. " = " .. path
            end
        end
        table.sort(absent)
        assert.are.same({}, absent)
    end)

    it("maps app.store to its init.lua", function()
        assert.are.equal("lualib/app/store/init.lua", spec.build.modules["app.store"])
    end)

    it("finds at least the core modules (the walk really sees lualib/)", function()
        local files = lualib_files()
        assert.is_true(#files >= 10)
        assert.are.equal("app.router", module_name("lualib/app/router.lua"))
        assert.are.equal("app.store", module_name("lualib/app/store/init.lua"))
    end)
end)
