"""E2E (issue #3): what agents really produce. Output that is not UTF-8 (binary junk on
stdout/stderr), a changed file in a legacy encoding (latin-1), very noisy output and
very large output: the task must still complete, its events and API answers must stay
valid JSON, the stored patch must still reproduce the files byte for byte, and the
server must survive."""
import os
import subprocess
import tempfile
import time
import unittest

from fakes.tasks_kit import GitRepos, assistant_messages, read_sse, start_task, task_server, wait_task
from harness import new_user


class OutputTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.repos = GitRepos()
        cls.repos.make("octo/demo", {"README.md": "hi\n", "legacy.txt": b"caf\xe9 ancien\n"})
        cls.url = cls.repos.url("octo/demo")
        cls.srv = task_server(cls.repos, env={"MAX_CONCURRENT_TASKS": "8", "MAX_TASKS_PER_USER": "8",
                                              "TASK_LEASE_SECONDS": "3", "TASK_MAX_ATTEMPTS": "1"})
        cls.tok = cls.srv.token(new_user())

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()
        cls.repos.close()

    def assertServerAlive(self):
        self.assertIsNone(self.srv.proc.poll(), "the server died (exit status %s)" % self.srv.proc.poll())

    def test_binary_junk_on_stdout_and_stderr(self):
        tid = start_task(self.srv, self.tok, "printf 'junk \\377\\376\\000 bytes\\n'\n"
                                             "printf 'err \\303\\050 junk\\n' >&2\necho still-ok\n", self.url)
        t = wait_task(self.srv, self.tok, tid, timeout=20)
        self.assertEqual(t["status"], "completed", t["error"])
        answer = assistant_messages(t)[0]
        self.assertIn("still-ok", answer)
        self.assertIn("junk", answer)
        status, _, evs, raw = read_sse(self.srv, "/api/tasks/%d/events" % tid, token=self.tok)
        self.assertEqual(status, 200)
        self.assertEqual(evs[-1]["event"], "end")
        for e in evs:
            self.assertIsInstance(e["data"], dict, "every event's data is JSON: %r" % (e,))
        texts = "\n".join(e["data"]["data"].get("text", "") for e in evs if e["event"] == "output")
        self.assertIn("still-ok", texts)
        self.assertIn("junk", texts)
        self.assertServerAlive()

    def test_file_in_a_legacy_encoding(self):
        """Latin-1 files are common in real repositories: editing one must not break the task,
        and the stored patch must carry its exact bytes."""
        tid = start_task(self.srv, self.tok, "printf 'caf\\351 nouveau\\n' > legacy.txt\n"
                                             "printf '\\351t\\351\\n' > new-latin1.txt\necho edited\n", self.url)
        t = wait_task(self.srv, self.tok, tid, timeout=20)
        self.assertEqual(t["status"], "completed", t["error"])
        self.assertEqual(sorted(t["changed_files"]), ["legacy.txt", "new-latin1.txt"])
        r = self.srv.request("GET", "/api/tasks/%d" % tid, token=self.tok)
        self.assertEqual(r.status, 200)
        self.assertIsNotNone(r.json, "the task row is valid JSON")
        work = tempfile.mkdtemp(prefix="aicode-latin1-")
        env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull,
                   GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.test")
        subprocess.run(["git", "clone", "-q", self.repos.path("octo/demo"), work], check=True, env=env)
        am = subprocess.run(["git", "am"], cwd=work, input=t["git_patch"].encode("utf-8"), env=env,
                            capture_output=True)
        self.assertEqual(am.returncode, 0, am.stderr)
        with open(os.path.join(work, "legacy.txt"), "rb") as f:
            self.assertEqual(f.read(), b"caf\xe9 nouveau\n")
        with open(os.path.join(work, "new-latin1.txt"), "rb") as f:
            self.assertEqual(f.read(), b"\xe9t\xe9\n")
        self.assertServerAlive()

    def test_noisy_output(self):
        t0 = time.time()
        tid = start_task(self.srv, self.tok, "seq 1 30000\necho last-line\n", self.url)
        t = wait_task(self.srv, self.tok, tid, timeout=60)
        self.assertEqual(t["status"], "completed", t["error"])
        self.assertLess(time.time() - t0, 30)
        self.assertIn("last-line", assistant_messages(t)[0])
        self.assertLess(len(assistant_messages(t)[0]), 1024 * 1024, "the answer is bounded")
        status, _, evs, _ = read_sse(self.srv, "/api/tasks/%d/events" % tid, token=self.tok)
        self.assertEqual(evs[-1]["event"], "end")
        self.assertLessEqual(sum(1 for e in evs if e["event"] == "output"), 10000, "output events are capped")
        self.assertServerAlive()


class LargeOutputTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.repos = GitRepos()
        cls.repos.make("octo/demo", {"README.md": "hi\n"})
        cls.url = cls.repos.url("octo/demo")
        cls.srv = task_server(cls.repos, env={"MAX_CONCURRENT_TASKS": "8", "MAX_TASKS_PER_USER": "8"})
        cls.tok = cls.srv.token(new_user())

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()
        cls.repos.close()

    def assertServerAlive(self):
        self.assertIsNone(self.srv.proc.poll(), "the server died (exit status %s)" % self.srv.proc.poll())

    def test_large_outputs_do_not_crash_the_server(self):
        """Rounds of tasks that print megabyte lines. Each process handle is freed by Lua's GC;
        the host must not touch it afterwards (a use-after-free here crashes the server)."""
        deadline = time.time() + 8
        rounds = 0
        while time.time() < deadline:
            ids = [start_task(self.srv, self.tok, "head -c 1000000 /dev/zero | tr '\\0' a\necho\necho r%d-%d\n"
                              % (rounds, i), self.url) for i in range(8)]
            for tid in ids:
                t = wait_task(self.srv, self.tok, tid, timeout=60)
                self.assertEqual(t["status"], "completed", t["error"])
            rounds += 1
        self.assertGreaterEqual(rounds, 2)
        self.assertServerAlive()


if __name__ == "__main__":
    unittest.main()
