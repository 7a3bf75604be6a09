-- app.git's input rules: parse_repo_url (repository URLs start-task, validate-token
-- and create-pr accept) and valid_branch (`git check-ref-format --branch` rules,
-- checked without running git), plus the helpers that keep the token out of
-- argv, URLs and messages.
local helper = require "support.helper"

describe("app.git", function()
    local git

    local function load(env)
        helper.fresh_host({ env = env or {} })
        git = require "app.git"
    end

    describe("parse_repo_url (defaults: https, github.com)", function()
        setup(function() load({ GIT_ALLOWED_HOSTS = false, GIT_ALLOW_HTTP = false }) end)

        local function parses(url, owner, repo)
            local r, why = git.parse_repo_url(url)
            assert.is_table(r, url .. ": " .. tostring(why))
            assert.are.equal(owner, r.owner, url)
            assert.are.equal(repo, r.repo, url)
            assert.are.equal(url, r.url)
            return r
        end

        local function rejects(url, message)
            local r, why = git.parse_repo_url(url)
            assert.is_nil(r, tostring(url))
            assert.is_string(why)
            if message then assert.are.equal(message, why, tostring(url)) end
        end

        it("accepts https://github.com/<owner>/<repo> with .git and one trailing slash", function()
            local r = parses("https://github.com/octo/hello", "octo", "hello")
            assert.are.equal("github.com", r.host)
            assert.are.equal("https", r.scheme)
            parses("https://github.com/octo/hello.git", "octo", "hello")
            parses("https://github.com/octo/hello/", "octo", "hello")
            parses("https://github.com/octo/hello.git/", "octo", "hello")
            parses("https://github.com/o-c_t.o/he.l-l_o", "o-c_t.o", "he.l-l_o")
        end)

        it("compares the scheme and host case-insensitively", function()
            local r = parses("HTTPS://GitHub.COM/octo/hello", "octo", "hello")
            assert.are.equal("github.com", r.host)
            assert.are.equal("https", r.scheme)
        end)

        it("requires a non-empty string", function()
            rejects(nil, "repo_url is required")
            rejects("", "repo_url is required")
            rejects(42, "repo_url is required")
        end)

        it("rejects whitespace, control characters and over-long URLs", function()
            rejects("https://github.com/octo/hel lo", "repo_url contains invalid characters")
            rejects("https://github.com/octo/hello\n", "repo_url contains invalid characters")
            rejects("https://github.com/octo/\0hello", "repo_url contains invalid characters")
            rejects("https://github.com/octo/" .. string.rep("a", 300), "repo_url contains invalid characters")
        end)

        it("accepts only https (http needs GIT_ALLOW_HTTP=1)", function()
            rejects("http://github.com/octo/hello", "repo_url must be an https URL")
            rejects("git@github.com:octo/hello.git", "repo_url must be an https URL")
            rejects("ssh://git@github.com/octo/hello", "repo_url must be an https URL")
            rejects("file:///etc/passwd", "repo_url must be an https URL")
            rejects("ext::sh -c touch% /tmp/pwned")
            rejects("github.com/octo/hello", "repo_url must be an https URL")
        end)

        it("rejects credentials in the URL", function()
            rejects("https://user:pass@github.com/octo/hello", "repo_url must not contain credentials")
            rejects("https://ghp_x@github.com/octo/hello", "repo_url must not contain credentials")
        end)

        it("rejects a query or a fragment", function()
            rejects("https://github.com/octo/hello?x=1", "repo_url must not have a query or fragment")
            rejects("https://github.com/octo/hello#main", "repo_url must not have a query or fragment")
        end)

        it("accepts only the allowed hosts (exactly: no port, subdomain or trailing dot)", function()
            local msg = "repo_url host is not allowed (GIT_ALLOWED_HOSTS)"
            rejects("https://gitlab.com/octo/hello", msg)
            rejects("https://github.com:443/octo/hello", msg)
            rejects("https://api.github.com/octo/hello", msg)
            rejects("https://github.com./octo/hello", msg)
            rejects("https://github.com.evil.example/octo/hello", msg)
            rejects("https://127.0.0.1/octo/hello", msg)
            rejects("https:///octo/hello", msg)
        end)

        it("requires exactly /<owner>/<repo>", function()
            rejects("https://github.com/octo")
            rejects("https://github.com/octo/")
            rejects("https://github.com/")
            rejects("https://github.com")
            rejects("https://github.com/octo/hello/tree/main")
            rejects("https://github.com//octo/hello")
            rejects("https://github.com/octo//hello")
            rejects("https://github.com/octo/hello//")
        end)

        it("rejects owner and repository names outside [A-Za-z0-9._-] or starting with - or .", function()
            local msg = "repo_url has an invalid owner or repository name"
            rejects("https://github.com/-octo/hello", msg)
            rejects("https://github.com/octo/-hello", msg)
            rejects("https://github.com/.octo/hello", msg)
            rejects("https://github.com/octo/.hello", msg)
            rejects("https://github.com/octo/..", msg)
            rejects("https://github.com/../hello", msg)
            rejects("https://github.com/octo/.git", msg)
            rejects("https://github.com/octo/hel%6co", msg)
            rejects("https://github.com/oct;o/hello", msg)
            rejects("https://github.com/octo/héllo", msg)
        end)
    end)

    describe("parse_repo_url with GIT_ALLOWED_HOSTS and GIT_ALLOW_HTTP", function()
        setup(function() load({ GIT_ALLOWED_HOSTS = "GitLab.example.com, git.local:8443", GIT_ALLOW_HTTP = "1" }) end)

        it("accepts the listed hosts (case-insensitively, host:port as listed) and no others", function()
            assert.is_table(git.parse_repo_url("https://gitlab.example.com/a/b"))
            assert.is_table(git.parse_repo_url("https://git.local:8443/a/b"))
            assert.is_nil(git.parse_repo_url("https://git.local/a/b"))
            assert.is_nil(git.parse_repo_url("https://github.com/a/b"))
        end)

        it("accepts http, and still no other scheme", function()
            local r = git.parse_repo_url("http://gitlab.example.com/a/b.git")
            assert.are.same({ url = "http://gitlab.example.com/a/b.git", host = "gitlab.example.com", owner = "a",
                repo = "b", scheme = "http" }, r)
            assert.is_nil(git.parse_repo_url("ftp://gitlab.example.com/a/b"))
        end)
    end)

    describe("valid_branch", function()
        setup(function() load() end)

        local function valid(b) assert.is_true(git.valid_branch(b), tostring(b)) end
        local function invalid(b) assert.is_false(git.valid_branch(b), tostring(b)) end

        it("accepts ordinary branch names", function()
            for _, b in ipairs({ "main", "master", "feature/x", "release-1.2", "a/b/c", "v1.0.0", "user@host",
                "fix_123", "ü-unicode", "a.b", "a./b", "foo.locked" }) do
                valid(b)
            end
        end)

        it("rejects empty, non-string and over-long names", function()
            invalid("")
            invalid(nil)
            invalid(42)
            invalid(string.rep("a", 256))
            valid(string.rep("a", 255))
        end)

        it("rejects the characters git forbids", function()
            for _, c in ipairs({ " ", "\t", "\n", "\0", "\127", "~", "^", ":", "?", "*", "[", "\\" }) do
                invalid("a" .. c .. "b")
            end
        end)

        it("rejects a leading '-' (it would read as an option) and a leading or trailing '/'", function()
            invalid("-b")
            invalid("--upload-pack=x")
            invalid("/main")
            invalid("main/")
        end)

        it("rejects '..', '@{', '//', a trailing '.', and '@' alone", function()
            invalid("a..b")
            invalid("..")
            invalid("a@{1}")
            invalid("a//b")
            invalid("main.")
            invalid("@")
            valid("a@b")
        end)

        it("rejects components that start with '.' or end with '.lock'", function()
            invalid(".hidden")
            invalid("a/.hidden")
            invalid("main.lock")
            invalid("a.lock/b")
            invalid("a/b.lock")
        end)

        -- `git check-ref-format --branch HEAD` fails: "HEAD" is not a valid branch name.
        it("rejects HEAD, as git check-ref-format --branch does", function()
            invalid("HEAD")
        end)
    end)

    describe("helpers", function()
        setup(function() load() end)

        local sandbox = { askpass = "/opt/x/askpass.sh" }

        it("remote_env passes the token only in the environment, through the sandbox's askpass", function()
            local env = git.remote_env(sandbox, "ghp_secret")
            assert.are.equal("ghp_secret", env.GIT_TOKEN)
            assert.are.equal("0", env.GIT_TERMINAL_PROMPT)
            assert.are.equal("1", env.GIT_CONFIG_NOSYSTEM)
            assert.are.equal("/opt/x/askpass.sh", env.GIT_ASKPASS)
            assert.are.equal("", git.remote_env(sandbox, nil).GIT_TOKEN)
        end)

        it("argv disables credential helpers and file:// before the command", function()
            local argv = git.argv(sandbox, "push", "--", "origin", "HEAD:refs/heads/x")
            assert.are.equal("git", argv[1])
            local joined = table.concat(argv, " ")
            assert.is_truthy(joined:find("-c credential.helper= ", 1, true))
            assert.is_truthy(joined:find("-c core.askPass=/opt/x/askpass.sh ", 1, true))
            assert.is_truthy(joined:find("-c protocol.file.allow=never ", 1, true))
            assert.are.same({ "push", "--", "origin", "HEAD:refs/heads/x" }, { table.unpack(argv, #argv - 3) })
        end)

        it("reason keeps git's fatal/error/remote lines and hides URLs", function()
            local why = git.reason("Cloning into 'repo'...\nremote: Repository not found.\n" ..
                "fatal: repository 'https://x-access-token:ghp_abc@github.com/o/r/' not found\n")
            assert.are.equal("remote: Repository not found.; fatal: repository '<url>' not found", why)
            assert.are.equal("something odd", git.reason("something odd"))
            assert.are.equal("", git.reason(nil))
            assert.is_true(#git.reason(string.rep("fatal: x\n", 200)) <= 500)
        end)

        -- The reason ends up in a task's error and in API error messages (JSON).
        it("reason never cuts a UTF-8 character in half", function()
            local why = git.reason("fatal: " .. string.rep("é", 300))
            assert.is_true(#why <= 500)
            assert.is_truthy(utf8.len(why), "reason produced invalid UTF-8")
        end)
    end)
end)
