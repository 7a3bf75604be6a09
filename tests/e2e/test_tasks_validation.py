"""E2E (issue #3): start-task refuses bad input before anything runs: a 400 (404 for
another user's project) JSON error, and no task row. repo_url must be
https://<allowed host>/<owner>/<repo>[.git] (plain http only with GIT_ALLOW_HTTP=1),
branch must pass `git check-ref-format --branch`, model must be a registered agent.
Injection attempts through repo_url and branch are refused and run nothing."""
import os
import unittest
import uuid

from fakes.tasks_kit import db_query, task_server, wait_task
from harness import new_user

ALLOWED = "127.0.0.1:18999"  # nothing listens there: a task that slipped through would fail to clone
GOOD_URL = "https://%s/octo/demo" % ALLOWED

BAD_URLS = [
    "http://%s/octo/demo" % ALLOWED,                 # plain http without GIT_ALLOW_HTTP
    "HTTP://%s/octo/demo" % ALLOWED,
    "file:///tmp/octo/demo.git",
    "file://%s/octo/demo" % ALLOWED,
    "ssh://git@%s/octo/demo.git" % ALLOWED,
    "git@%s:octo/demo.git" % ALLOWED,
    "git://%s/octo/demo.git" % ALLOWED,
    "ftp://%s/octo/demo" % ALLOWED,
    "ext::sh -c touch% /tmp/pwned",
    "/tmp/octo/demo.git",
    "octo/demo",
    "https://evil.example/octo/demo",                 # host not allowed
    "https://127.0.0.1/octo/demo",                    # allowed host, other port
    "https://127.0.0.1:18998/octo/demo",
    "https://%s.evil.example/octo/demo" % ALLOWED.split(":")[0],
    "https://user:pass@%s/octo/demo" % ALLOWED,       # credentials
    "https://ghp_secret@%s/octo/demo" % ALLOWED,
    "https://x-access-token:ghp_secret@%s/octo/demo.git" % ALLOWED,
    "https://evil.example@%s/octo/demo" % ALLOWED,
    "https://%s@evil.example/octo/demo" % ALLOWED,
    "https://%s/octo/demo?ref=main" % ALLOWED,        # query / fragment
    "https://%s/octo/demo#main" % ALLOWED,
    "https://%s/octo/demo.git?" % ALLOWED,
    "https://%s/octo/demo/tree/main" % ALLOWED,       # extra path segments
    "https://%s/octo/demo/info/refs" % ALLOWED,
    "https://%s/octo" % ALLOWED,
    "https://%s/" % ALLOWED,
    "https://%s" % ALLOWED,
    "https://%s/octo/demo/../../etc" % ALLOWED,       # ../
    "https://%s/../octo/demo" % ALLOWED,
    "https://%s/octo/../demo" % ALLOWED,
    "https://%s/octo/.." % ALLOWED,
    "https://%s/octo/%%2e%%2e" % ALLOWED,
    "https://%s/octo/demo%%2F..%%2Fx" % ALLOWED,
    "https://%s/-octo/demo" % ALLOWED,                # option-like names
    "https://%s/octo/--upload-pack=touch" % ALLOWED,
    "https://%s/octo/demo;touch%%20/tmp/x" % ALLOWED,  # shell metacharacters
    "https://%s/octo/demo;id" % ALLOWED,
    "https://%s/octo/$(id)" % ALLOWED,
    "https://%s/octo/`id`" % ALLOWED,
    "https://%s/octo/demo|id" % ALLOWED,
    " https://%s/octo/demo" % ALLOWED,                # whitespace / control characters
    "https://%s/octo/demo\n" % ALLOWED,
    "https://%s/octo/de mo" % ALLOWED,
    "https://%s/octo/demo\x00" % ALLOWED,
    "--upload-pack=touch /tmp/pwned",
    "-https://%s/octo/demo" % ALLOWED,
]

BAD_BRANCHES = [
    "feature x", "a..b", "a~1", "a^", "a^{}", "a:b", "-main", "--upload-pack=touch", "main.lock", "a/b.lock",
    "main\n", "main\ttab", "a@{1}", "@{-1}", "a?b", "a*b", "a[b", "a\\b", "a/", "/a", "a//b", ".hidden",
    "a/.b", "a.", "main\x7f", "main;touch /tmp/x", "$(touch /tmp/x)", "x" * 300,
]

GOOD_BRANCHES = ["main", "feature/x-1", "release-2.0", "a.b", "user@host", "UPPER_case"]


class ValidationTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # No GIT_ALLOW_HTTP: only https on the allowed host.
        cls.srv = task_server(hosts=[ALLOWED], env={"GIT_ALLOW_HTTP": "0"})
        cls.user = new_user()
        cls.tok = cls.srv.token(cls.user)

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()

    def rows(self):
        return db_query(self.srv, "SELECT count(*) AS n FROM tasks")[0]["n"]

    def start(self, body, raw=None, headers=None, token=None):
        return self.srv.request("POST", "/api/start-task", body=body, raw=raw, headers=headers,
                                token=token or self.tok)

    def assertRefused(self, r, status=400):
        self.assertEqual(r.status, status, r)
        self.assertTrue(r.headers.get("content-type", "").startswith("application/json"), r.headers)
        self.assertIsInstance(r.json, dict, r)
        self.assertIsInstance(r.json.get("error"), str, r)
        self.assertNotIn("task_id", r.json)
        self.assertNotIn("traceback", r.body.lower())
        self.assertNotIn(".lua:", r.body)

    def body(self, **kw):
        b = {"prompt": "echo hi", "repo_url": GOOD_URL, "model": "shell"}
        b.update(kw)
        return {k: v for k, v in b.items() if v is not None}

    def test_bad_repo_urls(self):
        before = self.rows()
        for url in BAD_URLS:
            with self.subTest(url=url):
                self.assertRefused(self.start(self.body(repo_url=url)))
        self.assertEqual(self.rows(), before, "a refused request created a task row")

    def test_bad_branches(self):
        before = self.rows()
        for branch in BAD_BRANCHES:
            with self.subTest(branch=branch):
                self.assertRefused(self.start(self.body(branch=branch)))
        self.assertEqual(self.rows(), before)
        self.assertFalse(os.path.exists("/tmp/x"), "a branch name ran as a command")

    def test_branch_lists_agree_with_git(self):
        """The lists above are right: git itself refuses every bad name and accepts the good ones."""
        import subprocess

        def git_ok(b):
            return subprocess.run(["git", "check-ref-format", "--branch", b], capture_output=True).returncode == 0
        for b in BAD_BRANCHES:
            if len(b) <= 255:
                self.assertFalse(git_ok(b), b)
        for b in GOOD_BRANCHES:
            self.assertTrue(git_ok(b), b)

    def test_branch_injection_runs_nothing(self):
        marker = "/tmp/pwned-branch-" + uuid.uuid4().hex
        before = self.rows()
        for branch in ("main;touch %s" % marker, "main && touch %s" % marker, "$(touch %s)" % marker,
                       "main`touch %s`" % marker, "main|touch %s" % marker):
            with self.subTest(branch=branch):
                self.assertRefused(self.start(self.body(branch=branch)))
        self.assertEqual(self.rows(), before)
        self.assertFalse(os.path.exists(marker))

    def test_bad_models(self):
        before = self.rows()
        for model in ("gpt-unknown", "Shell", "../shell", "shell ", "agents.shell", "", 42, True, ["shell"]):
            with self.subTest(model=model):
                self.assertRefused(self.start(self.body(model=model)))
        self.assertEqual(self.rows(), before)

    def test_missing_or_bad_fields(self):
        before = self.rows()
        for body in ({"repo_url": GOOD_URL, "model": "shell"}, {"prompt": "echo hi", "model": "shell"},
                     self.body(prompt=""), self.body(prompt="   \n"), self.body(repo_url=""), {},
                     self.body(prompt=42), self.body(repo_url=["x"]), self.body(branch=7),
                     self.body(github_token=12), self.body(github_token="has space")):
            with self.subTest(body=body):
                self.assertRefused(self.start(body))
        self.assertEqual(self.rows(), before)

    def test_non_json_bodies(self):
        before = self.rows()
        for raw in (b"not json", b"{\"prompt\": ", b"[1, 2]", b"\"string\"", b"null", b""):
            with self.subTest(raw=raw):
                r = self.start(None, raw=raw, headers={"Content-Type": "application/json"})
                self.assertRefused(r)
        self.assertEqual(self.rows(), before)

    def test_project_id_rules(self):
        other = new_user()
        otok = self.srv.token(other)
        r = self.srv.request("POST", "/api/projects", token=otok,
                             body={"name": "theirs", "repo_url": "https://github.com/them/repo"})
        self.assertEqual(r.status, 200, r)
        theirs = r.json["project"]["id"]
        before = self.rows()
        self.assertRefused(self.start(self.body(project_id=theirs)), 404)
        self.assertRefused(self.start(self.body(project_id=987654)), 404)
        for pid in ("1", "abc", 1.5, True, [1], {"id": 1}):
            with self.subTest(project_id=pid):
                self.assertRefused(self.start(self.body(project_id=pid)), 400)
        self.assertEqual(self.rows(), before)

    def test_valid_requests_are_accepted(self):
        """Control: the validator is not refusing everything. Well-formed requests create a
        task (it then fails to clone: nothing listens on the allowed host)."""
        cases = [(GOOD_URL, "main"), (GOOD_URL + ".git", "feature/x-1"), (GOOD_URL + "/", "release-2.0"),
                 (GOOD_URL, "a.b"), (GOOD_URL, "user@host"), (GOOD_URL, "UPPER_case")]
        tok = self.srv.token(new_user())
        for url, branch in cases:
            with self.subTest(url=url, branch=branch):
                r = self.start(self.body(repo_url=url, branch=branch), token=tok)
                self.assertEqual(r.status, 200, r)
                t = wait_task(self.srv, tok, r.json["task_id"])
                self.assertEqual(t["status"], "failed")
                self.assertEqual(t["target_branch"], branch)
                self.assertRegex(t["error"], r"(?i)clone")
        # The default branch is main, the default model is claude.
        r = self.start({"prompt": "echo hi", "repo_url": GOOD_URL})
        self.assertEqual(r.status, 200, r)
        row = db_query(self.srv, "SELECT target_branch, agent FROM tasks WHERE id = ?", (r.json["task_id"],))[0]
        self.assertEqual(row, {"target_branch": "main", "agent": "claude"})
        self.srv.request("POST", "/api/tasks/%d/cancel" % r.json["task_id"], token=self.tok, body={})


class HttpAllowedTests(unittest.TestCase):
    """GIT_ALLOW_HTTP=1 allows plain http on an allowed host, and nothing else."""

    @classmethod
    def setUpClass(cls):
        cls.srv = task_server(hosts=[ALLOWED], env={"GIT_ALLOW_HTTP": "1"})
        cls.tok = cls.srv.token(new_user())

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()

    def test_http_on_allowed_host_only(self):
        body = {"prompt": "echo hi", "model": "shell"}
        r = self.srv.request("POST", "/api/start-task", token=self.tok,
                             body=dict(body, repo_url="http://%s/octo/demo.git" % ALLOWED))
        self.assertEqual(r.status, 200, r)
        for url in ("http://evil.example/octo/demo", "http://127.0.0.1/octo/demo", "file:///tmp/x/y",
                    "http://u:p@%s/octo/demo" % ALLOWED, "http://%s/octo/demo/x" % ALLOWED):
            with self.subTest(url=url):
                r = self.srv.request("POST", "/api/start-task", token=self.tok, body=dict(body, repo_url=url))
                self.assertEqual(r.status, 400, r)


if __name__ == "__main__":
    unittest.main()
