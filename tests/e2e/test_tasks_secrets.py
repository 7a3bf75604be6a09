"""E2E (issue #3): the GitHub token canary. A private repository (git_http requires the
token) is cloned with a canary token, a pull request is pushed with it, and a clone
with a wrong canary fails; the canaries must then appear nowhere: not in the database
(sqlite3 .dump and the raw files), events, the server log, any API response, any
process's arguments while the task runs, or what the agent sees (.git/config, its
environment, git's config, its files)."""
import os
import subprocess
import threading
import time
import unittest
import uuid

from fakes.tasks_kit import GitRepos, assistant_messages, db_dump, read_sse, task_server, wait_task
from fakes.tasks_kit import github_api
from harness import new_user

AGENT_SCRIPT = r"""
echo "--- .git/config"; cat .git/config
echo "--- env"; env
echo "--- git config"; git config --list --show-origin
echo "--- remote"; git remote -v
echo "--- credentials"; cat ~/.git-credentials 2>/dev/null; ls -la ~ /tmp
echo "--- askpass"; (GIT_ASKPASS= git credential fill </dev/null 2>&1 | head -5) || true
echo "--- proc"; for p in /proc/[0-9]*; do tr '\0' ' ' < $p/cmdline 2>/dev/null; echo; cat $p/environ 2>/dev/null | tr '\0' '\n'; done
grep -rI . .git --include=config --include=FETCH_HEAD --include=packed-refs 2>/dev/null
sleep 2
echo change > change.txt
echo agent-done
"""


class SecretsCanaryTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.canary = "ghs_CANARY" + uuid.uuid4().hex
        cls.wrong = "ghs_WRONGCANARY" + uuid.uuid4().hex
        cls.repos = GitRepos(require_token=cls.canary)
        cls.repos.make("octo/private", {"README.md": "private repo\n"})
        cls.url = cls.repos.url("octo/private")
        cls.gh, _, _ = github_api.start(root=cls.repos.root, tokens={cls.canary: "octocat"}, private=["octo/private"])
        cls.srv = task_server(cls.repos, env={"GITHUB_API_URL": cls.gh.url})
        cls.tok = cls.srv.token(new_user())
        cls.responses = []

        def call(method, path, body=None):
            r = cls.srv.request(method, path, token=cls.tok, body=body)
            cls.responses.append(r)
            return r

        cls.call = staticmethod(call)
        r = call("POST", "/api/start-task", {"prompt": AGENT_SCRIPT, "repo_url": cls.url, "model": "shell",
                                             "github_token": cls.canary})
        assert r.status == 200, r
        cls.tid = r.json["task_id"]
        # Sample every process's arguments while the task runs (clone, agent, capture).
        cls.ps_samples, stop = [], threading.Event()

        def sampler():
            while not stop.is_set():
                out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
                cls.ps_samples.append(out)
                time.sleep(0.02)
        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        try:
            cls.task = wait_task(cls.srv, cls.tok, cls.tid, timeout=60)
            call("GET", "/api/tasks/%d" % cls.tid)
            call("GET", "/api/task-status/%d" % cls.tid)
            call("GET", "/api/tasks")
            call("GET", "/api/git-diff/%d" % cls.tid)
            call("POST", "/api/tasks/%d/events-token" % cls.tid)
            # The push (create-pr) is sampled too.
            cls.pr = call("POST", "/api/create-pr/%d" % cls.tid, {"github_token": cls.canary})
        finally:
            stop.set()
            th.join(5)
        call("POST", "/api/validate-token", {"github_token": cls.canary, "repo_url": cls.url})
        # A clone with a wrong canary fails; that one must not leak either.
        r = call("POST", "/api/start-task", {"prompt": "echo hi", "repo_url": cls.url, "model": "shell",
                                             "github_token": cls.wrong})
        cls.bad_tid = r.json["task_id"]
        cls.bad = wait_task(cls.srv, cls.tok, cls.bad_tid)
        call("GET", "/api/tasks/%d" % cls.bad_tid)
        call("POST", "/api/create-pr/%d" % cls.bad_tid, {"github_token": cls.wrong})
        call("POST", "/api/validate-token", {"github_token": cls.wrong, "repo_url": cls.url})
        # A follow-up without a token: no token was kept for it, so it cannot clone the private repo.
        call("POST", "/api/tasks/%d/chat" % cls.tid, {"content": "echo follow-up"})
        cls.after_chat = wait_task(cls.srv, cls.tok, cls.tid)
        # With the token again, the follow-up clones and continues.
        call("POST", "/api/tasks/%d/chat" % cls.tid, {"content": "cat change.txt; env; cat .git/config\n"
                                                      "echo more > more.txt", "github_token": cls.canary})
        cls.after_token_chat = wait_task(cls.srv, cls.tok, cls.tid)
        call("GET", "/api/tasks/%d" % cls.tid)
        cls.events = [read_sse(cls.srv, "/api/tasks/%d/events" % t, token=cls.tok)[3] for t in (cls.tid, cls.bad_tid)]

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()
        cls.gh.close()
        cls.repos.close()

    def assertClean(self, text, where):
        for secret in (self.canary, self.wrong):
            self.assertNotIn(secret, text, "token found in " + where)
            self.assertNotIn(secret[4:], text, "token (without prefix) found in " + where)

    def test_private_clone_with_the_token_works(self):
        self.assertEqual(self.task["status"], "completed", self.task["error"])
        self.assertIn("agent-done", assistant_messages(self.task)[0])
        self.assertEqual(self.task["changed_files"], ["change.txt"])
        users = {r.get("user") for r in self.repos.requests() if r.get("status") == 200}
        self.assertTrue(users - {None, ""}, "the clone authenticated")

    def test_wrong_token_fails_readably(self):
        self.assertEqual(self.bad["status"], "failed")
        self.assertRegex(self.bad["error"], r"(?i)clone")
        self.assertClean(self.bad["error"], "the error")

    def test_agent_never_sees_the_token(self):
        out = assistant_messages(self.task)[0]
        self.assertIn("--- .git/config", out)
        self.assertIn("--- env", out)
        self.assertIn("[remote \"origin\"]", out)
        self.assertClean(out, "the agent's view (.git/config, env, git config, /proc)")

    def test_clone_url_has_no_credentials(self):
        out = assistant_messages(self.task)[0]
        remote = [l for l in out.splitlines() if l.strip().startswith("url =")]
        self.assertEqual(len(remote), 1, out)
        self.assertNotIn("@", remote[0])

    def test_process_arguments(self):
        self.assertGreater(len(self.ps_samples), 10)
        self.assertTrue(any("sleep 2" in s for s in self.ps_samples), "sampled while the agent ran")
        self.assertTrue(any(" clone " in s for s in self.ps_samples), "sampled while git cloned")
        for s in self.ps_samples:
            self.assertClean(s, "process arguments")

    def test_database(self):
        self.assertClean(db_dump(self.srv), "sqlite3 .dump")
        for name in os.listdir(self.srv.data_dir):
            path = os.path.join(self.srv.data_dir, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    data = f.read()
                for secret in (self.canary, self.wrong):
                    self.assertNotIn(secret.encode(), data, "token in raw file " + name)

    def test_events(self):
        for raw in self.events:
            self.assertIn("event: end", raw)
            self.assertClean(raw, "events")

    def test_server_log(self):
        log = self.srv.log_text()
        self.assertIn("start-task", log)
        self.assertClean(log, "the server log")

    def test_api_responses(self):
        self.assertGreater(len(self.responses), 10)
        for r in self.responses:
            self.assertClean(r.body, "an API response")
            self.assertClean(repr(r.headers), "API response headers")

    def test_pull_request_pushed_with_the_token(self):
        self.assertEqual(self.pr.status, 200, self.pr)
        branch = self.pr.json["branch"]
        self.assertIn(branch, self.repos.branches("octo/private"))
        self.assertEqual(self.repos.git("octo/private", "show", "%s:change.txt" % branch), "change\n")

    def test_followup_with_the_token(self):
        t = self.after_token_chat
        self.assertEqual(t["status"], "completed", t["error"])
        self.assertEqual(sorted(t["changed_files"]), ["change.txt", "more.txt"])
        self.assertIn("change", assistant_messages(t)[-1])
        self.assertClean(assistant_messages(t)[-1], "the follow-up agent's view")

    def test_followup_without_token_fails_readably(self):
        """The token is not stored: a follow-up on a private repository without a new token
        fails to clone (readably), and the task's earlier result is kept."""
        t = self.after_chat
        self.assertEqual(t["status"], "failed")
        self.assertRegex(t["error"], r"(?i)clone")
        self.assertIn("change.txt", t["changed_files"])
        self.assertClean(repr(t), "the task after the follow-up")


if __name__ == "__main__":
    unittest.main()
