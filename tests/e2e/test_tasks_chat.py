"""E2E (issue #3): follow-up chat. POST /api/tasks/<id>/chat {"content": script} re-runs
the agent on top of the task's previous result; the task's diff, patch and changed
files then cover every run, and chat_messages alternates user / assistant. Clients
cannot post assistant messages; a running task answers 409; another user's task 404."""
import os
import subprocess
import tempfile
import unittest

from fakes.tasks_kit import (GitRepos, ISO_UTC, SHA1, assistant_messages, read_sse, start_task, task_server,
                             wait_task)
from harness import new_user

FIRST = "echo one > one.txt\necho 'first line' >> README.md\necho first-run-done\n"
SECOND = ("test -f one.txt && echo saw-one || echo missing-one\n"
          "grep -q 'first line' README.md && echo saw-readme\n"
          "echo two >> one.txt\necho two > two.txt\nrm gone.txt\necho second-run-done\n")


class ChatTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.repos = GitRepos()
        cls.repos.make("octo/demo", {"README.md": "# demo\n", "gone.txt": "bye\n"})
        cls.url = cls.repos.url("octo/demo")
        cls.srv = task_server(cls.repos)
        cls.user = new_user()
        cls.tok = cls.srv.token(cls.user)
        cls.other = cls.srv.token(new_user())
        cls.tok2 = cls.srv.token(new_user())
        cls.tid = start_task(cls.srv, cls.tok, FIRST, cls.url)
        cls.first = wait_task(cls.srv, cls.tok, cls.tid)
        cls.chat_response = cls.srv.request("POST", "/api/tasks/%d/chat" % cls.tid, token=cls.tok,
                                            body={"content": SECOND})
        cls.second = wait_task(cls.srv, cls.tok, cls.tid)

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()
        cls.repos.close()

    def chat(self, tid, body, token=None):
        return self.srv.request("POST", "/api/tasks/%d/chat" % tid, token=token or self.tok, body=body)

    def test_first_run(self):
        self.assertEqual(self.first["status"], "completed", self.first["error"])
        self.assertEqual(sorted(self.first["changed_files"]), ["README.md", "one.txt"])

    def test_chat_response(self):
        r = self.chat_response
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "success")

    def test_followup_runs_on_top_of_the_previous_result(self):
        t = self.second
        self.assertEqual(t["status"], "completed", t["error"])
        answers = assistant_messages(t)
        self.assertEqual(len(answers), 2)
        self.assertIn("first-run-done", answers[0])
        self.assertIn("saw-one", answers[1])
        self.assertIn("saw-readme", answers[1])
        self.assertIn("second-run-done", answers[1])

    def test_results_cover_both_runs(self):
        t = self.second
        self.assertEqual(sorted(t["changed_files"]), ["README.md", "gone.txt", "one.txt", "two.txt"])
        self.assertRegex(t["commit_hash"], SHA1)
        self.assertNotEqual(t["commit_hash"], self.first["commit_hash"])
        for path in ("README.md", "gone.txt", "one.txt", "two.txt"):
            self.assertIn(path, t["git_diff"])
            self.assertIn(path, t["git_patch"])
        self.assertIn("+first line", t["git_diff"])
        fc = {c["filename"]: c for c in t["execution_metadata"]["file_changes"]}
        self.assertEqual((fc["one.txt"]["before"], fc["one.txt"]["after"]), ("FILE_NOT_EXISTS", "one\ntwo\n"))
        self.assertEqual((fc["gone.txt"]["before"], fc["gone.txt"]["after"]), ("bye\n", "FILE_DELETED"))
        self.assertEqual(fc["README.md"]["after"], "# demo\nfirst line\n")
        r = self.srv.request("GET", "/api/git-diff/%d" % self.tid, token=self.tok)
        self.assertEqual(r.json["git_diff"], t["git_diff"])

    def test_patch_of_both_runs_applies(self):
        t = self.second
        work = tempfile.mkdtemp(prefix="aicode-chat-am-")
        env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull,
                   GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.test")
        subprocess.run(["git", "clone", "-q", self.repos.path("octo/demo"), work], check=True, env=env)
        r = subprocess.run(["git", "am"], cwd=work, input=t["git_patch"].encode(), env=env, capture_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(work, "one.txt")) as f:
            self.assertEqual(f.read(), "one\ntwo\n")
        self.assertFalse(os.path.exists(os.path.join(work, "gone.txt")))
        d = subprocess.run(["git", "diff", "origin/main", "HEAD"], cwd=work, env=env, capture_output=True, text=True)
        self.assertEqual(d.stdout, t["git_diff"])

    def test_chat_messages_alternate(self):
        msgs = self.second["chat_messages"]
        self.assertEqual([m["role"] for m in msgs], ["user", "assistant", "user", "assistant"])
        self.assertEqual(msgs[0]["content"], FIRST)
        self.assertEqual(msgs[2]["content"], SECOND)
        for m in msgs:
            self.assertRegex(m["timestamp"], ISO_UTC)
        stamps = [m["timestamp"] for m in msgs]
        self.assertEqual(stamps, sorted(stamps))
        # task-status keeps the first prompt (the original's field)
        s = self.srv.request("GET", "/api/task-status/%d" % self.tid, token=self.tok).json["task"]
        self.assertEqual(s["prompt"], FIRST)
        self.assertEqual(self.second["execution_metadata"].get("runs"), 2)

    def test_followup_events(self):
        _, _, evs, _ = read_sse(self.srv, "/api/tasks/%d/events" % self.tid, token=self.tok)
        statuses = [e["data"]["data"]["status"] for e in evs if e["event"] == "status"]
        self.assertEqual(statuses.count("completed"), 2, statuses)
        self.assertEqual(statuses[-1], "completed")
        results = [e for e in evs if e["event"] == "result"]
        self.assertEqual(len(results), 2)
        self.assertEqual(evs[-1]["event"], "end")

    def test_assistant_role_refused(self):
        n = len(self.second["chat_messages"])
        for body in ({"content": "I am the agent", "role": "assistant"}, {"content": "x", "role": "system"},
                     {"content": ""}, {"content": "   "}, {}, {"role": "user"}, {"content": 5}):
            with self.subTest(body=body):
                r = self.chat(self.tid, body)
                self.assertEqual(r.status, 400, r)
                self.assertIsInstance(r.json.get("error"), str)
        t = wait_task(self.srv, self.tok, self.tid)
        self.assertEqual(len(t["chat_messages"]), n, "a refused message was stored")
        self.assertEqual(t["status"], "completed")

    def test_another_users_task_is_404(self):
        r = self.chat(self.tid, {"content": "echo pwn > pwn.txt"}, token=self.other)
        self.assertEqual(r.status, 404, r)
        t = wait_task(self.srv, self.tok, self.tid)
        self.assertNotIn("pwn.txt", t["changed_files"])

    def test_chat_while_running_is_409(self):
        tid = start_task(self.srv, self.tok2, "sleep 20\n", self.url)
        r = self.chat(tid, {"content": "echo early"}, token=self.tok2)  # pending or running
        self.assertEqual(r.status, 409, r)
        wait_task(self.srv, self.tok2, tid, statuses=("running",))
        r = self.chat(tid, {"content": "echo early"}, token=self.tok2)
        self.assertEqual(r.status, 409, r)
        self.assertIsInstance(r.json.get("error"), str)
        c = self.srv.request("POST", "/api/tasks/%d/cancel" % tid, token=self.tok2, body={})
        self.assertEqual(c.status, 200, c)
        t = wait_task(self.srv, self.tok2, tid)
        self.assertEqual(t["status"], "cancelled")
        self.assertEqual([m["role"] for m in t["chat_messages"]], ["user"], "the refused messages were not stored")

    def test_chat_after_a_failed_run(self):
        """A failed task (no patch) can be continued: the follow-up runs on the base branch."""
        tid = start_task(self.srv, self.tok2, "echo broken > broken.txt\nexit 3\n", self.url)
        t = wait_task(self.srv, self.tok2, tid)
        self.assertEqual(t["status"], "failed")
        r = self.chat(tid, {"content": "test -f broken.txt && echo leftover || echo clean\necho fixed > fixed.txt\n"},
                      token=self.tok2)
        self.assertEqual(r.status, 200, r)
        t = wait_task(self.srv, self.tok2, tid)
        self.assertEqual(t["status"], "completed", t["error"])
        self.assertIsNone(t["error"])
        self.assertEqual(t["changed_files"], ["fixed.txt"])
        self.assertIn("clean", assistant_messages(t)[-1])

    def test_chat_after_a_run_without_changes(self):
        tid = start_task(self.srv, self.tok2, "echo nothing\n", self.url)
        t = wait_task(self.srv, self.tok2, tid)
        self.assertEqual((t["status"], t["changed_files"]), ("completed", []))
        r = self.chat(tid, {"content": "echo now > now.txt\n"}, token=self.tok2)
        self.assertEqual(r.status, 200, r)
        t = wait_task(self.srv, self.tok2, tid)
        self.assertEqual(t["status"], "completed", t["error"])
        self.assertEqual(t["changed_files"], ["now.txt"])
        self.assertEqual([m["role"] for m in t["chat_messages"]], ["user", "assistant", "user", "assistant"])


if __name__ == "__main__":
    unittest.main()
