-- The original's rules (seed-contract §1.4):
--   ^https://github\.com/([^/]+)/([^/]+?)(?:\.git)?/?$
--   ^git@github\.com:([^/]+)/([^/]+?)(?:\.git)?$
-- returning (repo_owner, repo_name) with ".git" stripped.
local helper = require "support.helper"

describe("app.github_url.parse", function()
    local github_url

    setup(function()
        helper.fresh_host()
        github_url = require "app.github_url"
    end)

    local function parses(url, owner, repo)
        local o, r = github_url.parse(url)
        assert.are.equal(owner, o, url)
        assert.are.equal(repo, r, url)
    end

    local function rejects(url)
        assert.is_nil(github_url.parse(url), tostring(url))
    end

    it("accepts https URLs", function()
        parses("https://github.com/octo/hello", "octo", "hello")
    end)

    it("strips .git and one trailing slash", function()
        parses("https://github.com/octo/hello.git", "octo", "hello")
        parses("https://github.com/octo/hello/", "octo", "hello")
        parses("https://github.com/octo/hello.git/", "octo", "hello")
    end)

    it("strips only one .git suffix", function()
        parses("https://github.com/octo/hello.git.git", "octo", "hello.git")
    end)

    it("accepts SSH URLs", function()
        parses("git@github.com:octo/hello.git", "octo", "hello")
        parses("git@github.com:octo/hello", "octo", "hello")
    end)

    it("keeps dots, dashes and underscores in names", function()
        parses("https://github.com/my-org/my_repo.js", "my-org", "my_repo.js")
        parses("git@github.com:a.b/c-d_e", "a.b", "c-d_e")
    end)

    it("rejects http, www, other hosts and upper-case schemes", function()
        rejects("http://github.com/octo/hello")
        rejects("https://www.github.com/octo/hello")
        rejects("https://gitlab.com/octo/hello")
        rejects("https://github.com.evil.com/octo/hello")
        rejects("HTTPS://GITHUB.COM/octo/hello")
        rejects("ssh://git@github.com/octo/hello")
    end)

    it("rejects extra or missing path segments", function()
        rejects("https://github.com/octo/hello/tree/main")
        rejects("https://github.com/octo")
        rejects("https://github.com/octo/")
        rejects("https://github.com/")
        rejects("https://github.com//hello")
        rejects("https://github.com/octo/hello//")
        rejects("git@github.com:octo/hello/")
        rejects("git@github.com:octo")
    end)

    it("rejects surrounding whitespace and control characters", function()
        rejects(" https://github.com/octo/hello")
        rejects("https://github.com/octo/hello ")
        rejects("https://github.com/octo/hello\n")
    end)

    it("rejects dot segments and characters outside GitHub's name alphabet", function()
        rejects("https://github.com/../hello")
        rejects("https://github.com/octo/..")
        rejects("https://github.com/octo/.")
        rejects("https://github.com/octo/my repo")
        rejects("https://github.com/octo/hello?tab=readme")
        rejects("https://github.com/octo/hello#readme")
    end)

    it("rejects over-long URLs and names", function()
        rejects("https://github.com/octo/" .. ("a"):rep(300))
        rejects("https://github.com/" .. ("o"):rep(101) .. "/hello")
        parses("https://github.com/" .. ("o"):rep(100) .. "/hello", ("o"):rep(100), "hello")
    end)

    it("rejects non-strings", function()
        rejects(nil)
        rejects(42)
        rejects({})
    end)
end)
