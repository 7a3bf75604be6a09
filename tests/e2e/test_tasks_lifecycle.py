"""E2E (issue #3): the task lifecycle. Cancel mid-run (every process of the task gone,
detached ones included), cancel of a finished task (409) and of a pending one
(cancelled at once), the task timeout (TASK_TIMEOUT), clone failures (unknown repo,
wrong token) and agent crashes with readable errors, concurrency limits
(MAX_CONCURRENT_TASKS, MAX_TASKS_PER_USER), and a server kill -9 mid-task followed by
a restart on the same data directory (TASK_LEASE_SECONDS)."""
import datetime
import signal
import time
import unittest
import uuid

from fakes.tasks_kit import (GitRepos, assistant_messages, pgrep, read_sse, sandbox_dirs, start_task, task_row,
                             task_server, wait_for, wait_no_process, wait_task)
from harness import new_user


def marker():
    return "aicodemark" + uuid.uuid4().hex[:16]


def sleeper(mark, seconds):
    """A script whose processes carry `mark` in their command line: a detached (setsid)
    background sleeper and a foreground one."""
    return ("setsid bash -c 'exec -a %s-bg sleep %d' </dev/null >/dev/null 2>&1 &\n"
            "(exec -a %s-fg sleep %d)\necho finished-sleeping\n" % (mark, seconds + 30, mark, seconds))


def ts(s):
    return datetime.datetime.strptime(s.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


class CancelTimeoutFailureTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.repos = GitRepos()
        cls.repos.make("octo/demo", {"README.md": "hi\n"})
        cls.token_repos = GitRepos(require_token="ghs_right_token_1234")
        cls.token_repos.make("octo/private", {"README.md": "private\n"})
        cls.url = cls.repos.url("octo/demo")
        cls.srv = task_server(cls.repos, hosts=[cls.token_repos.host],
                              env={"TASK_TIMEOUT": "5", "MAX_CONCURRENT_TASKS": "8", "MAX_TASKS_PER_USER": "8"})
        cls.tok = cls.srv.token(new_user())

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()
        cls.repos.close()
        cls.token_repos.close()

    def test_cancel_mid_run(self):
        mark = marker()
        tid = start_task(self.srv, self.tok, sleeper(mark, 60), self.url)
        wait_for(lambda: len(pgrep(mark)) >= 2, timeout=15, what="the task's sleepers")
        self.assertEqual(task_row(self.srv, self.tok, tid)["status"], "running")
        t0 = time.time()
        r = self.srv.request("POST", "/api/tasks/%d/cancel" % tid, token=self.tok, body={})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "success")
        self.assertEqual(r.json["task_id"], tid)
        t = wait_task(self.srv, self.tok, tid, timeout=5)
        self.assertEqual(t["status"], "cancelled")
        self.assertLess(time.time() - t0, 5)
        self.assertEqual(wait_no_process(mark, timeout=3), [], "a process of the cancelled task survived")
        self.assertNotIn("finished-sleeping", "\n".join(assistant_messages(t)))
        self.assertIsNone(t["commit_hash"])
        wait_for(lambda: sandbox_dirs(self.srv) == [] or not any(d.startswith("task-%d-" % tid)
                                                                  for d in sandbox_dirs(self.srv)),
                 timeout=5, what="the sandbox directory to go")
        _, _, evs, _ = read_sse(self.srv, "/api/tasks/%d/events" % tid, token=self.tok)
        self.assertEqual([e["data"]["data"]["status"] for e in evs if e["event"] == "status"][-1], "cancelled")
        # Cancelling again: it has finished.
        r = self.srv.request("POST", "/api/tasks/%d/cancel" % tid, token=self.tok, body={})
        self.assertEqual(r.status, 409, r)

    def test_cancel_finished_task_is_409(self):
        tid = start_task(self.srv, self.tok, "echo done\n", self.url)
        self.assertEqual(wait_task(self.srv, self.tok, tid)["status"], "completed")
        r = self.srv.request("POST", "/api/tasks/%d/cancel" % tid, token=self.tok, body={})
        self.assertEqual(r.status, 409, r)
        self.assertIsInstance(r.json.get("error"), str)
        self.assertEqual(task_row(self.srv, self.tok, tid)["status"], "completed")

    def test_timeout(self):
        mark = marker()
        t0 = time.time()
        tid = start_task(self.srv, self.tok, sleeper(mark, 30), self.url)
        wait_for(lambda: pgrep(mark), timeout=15, what="the sleeper")
        t = wait_task(self.srv, self.tok, tid, timeout=15)
        elapsed = time.time() - t0
        self.assertEqual(t["status"], "failed")
        self.assertRegex(t["error"], r"(?i)time(d)? ?out")
        self.assertNotIn("traceback", t["error"].lower())
        self.assertLess(elapsed, 12)
        self.assertGreaterEqual(elapsed, 4.5)
        self.assertEqual(wait_no_process(mark, timeout=3), [], "a process of the timed-out task survived")
        self.assertNotIn("finished-sleeping", "\n".join(assistant_messages(t)))
        wait_for(lambda: not any(d.startswith("task-%d-" % tid) for d in sandbox_dirs(self.srv)),
                 timeout=5, what="the timed-out task's sandbox to go")

    def test_unknown_repository(self):
        tid = start_task(self.srv, self.tok, "echo hi\n", self.repos.url("octo/does-not-exist"))
        t = wait_task(self.srv, self.tok, tid)
        self.assertEqual(t["status"], "failed")
        self.assertRegex(t["error"], r"(?i)clone")
        self.assertLess(len(t["error"]), 1000)
        self.assertNotIn("traceback", t["error"].lower())

    def test_unknown_branch(self):
        tid = start_task(self.srv, self.tok, "echo hi\n", self.url, branch="no-such-branch")
        t = wait_task(self.srv, self.tok, tid)
        self.assertEqual(t["status"], "failed")
        self.assertRegex(t["error"], r"(?i)clone")

    def test_wrong_token(self):
        bad = "ghs_wrong_token_" + uuid.uuid4().hex
        tid = start_task(self.srv, self.tok, "echo hi\n", self.token_repos.url("octo/private"), github_token=bad)
        t = wait_task(self.srv, self.tok, tid)
        self.assertEqual(t["status"], "failed")
        self.assertRegex(t["error"], r"(?i)clone")
        self.assertNotIn(bad, t["error"])
        self.assertNotIn(bad[4:], t["error"])
        # and no token at all
        tid = start_task(self.srv, self.tok, "echo hi\n", self.token_repos.url("octo/private"))
        t = wait_task(self.srv, self.tok, tid)
        self.assertEqual(t["status"], "failed")
        self.assertRegex(t["error"], r"(?i)clone")
        # control: the right token clones
        tid = start_task(self.srv, self.tok, "cat README.md\n", self.token_repos.url("octo/private"),
                         github_token="ghs_right_token_1234")
        t = wait_task(self.srv, self.tok, tid)
        self.assertEqual(t["status"], "completed", t["error"])
        self.assertIn("private", assistant_messages(t)[0])

    def test_agent_crash(self):
        tid = start_task(self.srv, self.tok, "echo partial > partial.txt\necho dying >&2\nexit 3\n", self.url)
        t = wait_task(self.srv, self.tok, tid)
        self.assertEqual(t["status"], "failed")
        self.assertRegex(t["error"], r"\b3\b")
        self.assertNotIn("traceback", t["error"].lower())
        # killed by a signal
        tid = start_task(self.srv, self.tok, "kill -KILL $$\n", self.url)
        t = wait_task(self.srv, self.tok, tid)
        self.assertEqual(t["status"], "failed")
        self.assertIsInstance(t["error"], str)


class SlowCloneTests(unittest.TestCase):
    """Cancel while git is still cloning (the git server answers slowly)."""

    @classmethod
    def setUpClass(cls):
        cls.repos = GitRepos(delay_ms=1500)
        cls.repos.make("octo/slow", {"README.md": "hi\n"})
        cls.srv = task_server(cls.repos)
        cls.tok = cls.srv.token(new_user())

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()
        cls.repos.close()

    def test_cancel_during_clone(self):
        url = self.repos.url("octo/slow")
        tid = start_task(self.srv, self.tok, "echo should-not-run\n", url)
        wait_for(lambda: pgrep(url), timeout=10, what="git clone to start")
        r = self.srv.request("POST", "/api/tasks/%d/cancel" % tid, token=self.tok, body={})
        self.assertEqual(r.status, 200, r)
        t = wait_task(self.srv, self.tok, tid, timeout=5)
        self.assertEqual(t["status"], "cancelled")
        self.assertEqual(wait_no_process(url, timeout=3), [], "git processes of the cancelled clone survived")
        self.assertEqual(len(t["chat_messages"]), 1)
        wait_for(lambda: sandbox_dirs(self.srv) == [], timeout=5, what="the sandbox to go")


class PendingCancelTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.repos = GitRepos()
        cls.repos.make("octo/demo", {"README.md": "hi\n"})
        cls.srv = task_server(cls.repos, env={"MAX_CONCURRENT_TASKS": "1"})
        cls.tok = cls.srv.token(new_user())

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()
        cls.repos.close()

    def test_cancel_pending_task(self):
        mark = marker()
        url = self.repos.url("octo/demo")
        long_id = start_task(self.srv, self.tok, sleeper(mark, 60), url)
        wait_task(self.srv, self.tok, long_id, statuses=("running",))
        pending_id = start_task(self.srv, self.tok, "echo should-not-run > ran.txt\n", url)
        time.sleep(0.6)  # a few engine polls: it stays pending behind the running task
        self.assertEqual(task_row(self.srv, self.tok, pending_id)["status"], "pending")
        r = self.srv.request("POST", "/api/tasks/%d/cancel" % pending_id, token=self.tok, body={})
        self.assertEqual(r.status, 200, r)
        t = task_row(self.srv, self.tok, pending_id)
        self.assertEqual(t["status"], "cancelled", "a pending task is cancelled at once")
        self.assertIsNone(t["started_at"])
        # Free the slot; the cancelled task must never run.
        r = self.srv.request("POST", "/api/tasks/%d/cancel" % long_id, token=self.tok, body={})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(wait_task(self.srv, self.tok, long_id)["status"], "cancelled")
        after = start_task(self.srv, self.tok, "echo next\n", url)
        self.assertEqual(wait_task(self.srv, self.tok, after)["status"], "completed")
        t = task_row(self.srv, self.tok, pending_id)
        self.assertEqual(t["status"], "cancelled")
        self.assertIsNone(t["started_at"])
        self.assertEqual(len(t["chat_messages"]), 1)
        self.assertEqual(wait_no_process(mark), [])


class ConcurrencyTests(unittest.TestCase):
    def test_global_limit(self):
        repos = GitRepos()
        repos.make("octo/demo", {"README.md": "hi\n"})
        srv = task_server(repos, env={"MAX_CONCURRENT_TASKS": "2", "MAX_TASKS_PER_USER": "10"})
        try:
            tok = srv.token(new_user())
            ids = [start_task(srv, tok, "sleep 1\necho %d > f%d.txt\n" % (i, i), repos.url("octo/demo"))
                   for i in range(5)]
            max_running, deadline = 0, time.time() + 40
            while time.time() < deadline:
                r = srv.request("GET", "/api/tasks?status=running", token=tok)
                max_running = max(max_running, len(r.json["tasks"]))
                left = srv.request("GET", "/api/tasks?status=pending", token=tok).json["total_tasks"]
                if left == 0 and not r.json["tasks"]:
                    break
                time.sleep(0.03)
            tasks = [wait_task(srv, tok, i) for i in ids]
            self.assertEqual([t["status"] for t in tasks], ["completed"] * 5)
            self.assertLessEqual(max_running, 2)
            self.assertEqual(max_running, 2, "two tasks should run side by side")
            # From the recorded times: never more than two overlap.
            spans = [(ts(t["started_at"]), ts(t["completed_at"])) for t in tasks]
            for s, _ in spans:
                overlapping = sum(1 for a, b in spans if a <= s < b)
                self.assertLessEqual(overlapping, 2, spans)
        finally:
            srv.close()
            repos.close()

    def test_per_user_limit(self):
        repos = GitRepos()
        repos.make("octo/demo", {"README.md": "hi\n"})
        srv = task_server(repos, env={"MAX_CONCURRENT_TASKS": "4", "MAX_TASKS_PER_USER": "1"})
        try:
            tok_a, tok_b = srv.token(new_user()), srv.token(new_user())
            url = repos.url("octo/demo")
            a1 = start_task(srv, tok_a, "sleep 1.5\n", url)
            a2 = start_task(srv, tok_a, "sleep 1.5\n", url)
            b1 = start_task(srv, tok_b, "sleep 1.5\n", url)
            saw_a_both = False
            deadline = time.time() + 30
            while time.time() < deadline:
                ra = srv.request("GET", "/api/tasks?status=running", token=tok_a).json["tasks"]
                if len(ra) > 1:
                    saw_a_both = True
                if srv.request("GET", "/api/tasks?status=completed", token=tok_a).json["total_tasks"] == 2:
                    break
                time.sleep(0.03)
            self.assertFalse(saw_a_both, "one user's tasks ran in parallel despite MAX_TASKS_PER_USER=1")
            ta1, ta2 = wait_task(srv, tok_a, a1), wait_task(srv, tok_a, a2)
            tb1 = wait_task(srv, tok_b, b1)
            for t in (ta1, ta2, tb1):
                self.assertEqual(t["status"], "completed", t["error"])
            self.assertLessEqual(ts(ta1["completed_at"]), ts(ta2["started_at"]), "a2 waited for a1")
            # b1 ran alongside a1 (another user is not held back)
            self.assertLess(ts(tb1["started_at"]), ts(ta1["completed_at"]))
            self.assertLess(ts(tb1["started_at"]), ts(ta2["started_at"]))
        finally:
            srv.close()
            repos.close()


class CrashRecoveryTests(unittest.TestCase):
    """kill -9 of the server mid-task, then a restart on the same data directory."""

    def run_crash(self, max_attempts):
        repos = GitRepos()
        repos.make("octo/demo", {"README.md": "hi\n"})
        env = {"TASK_LEASE_SECONDS": "3", "TASK_MAX_ATTEMPTS": str(max_attempts)}
        first = task_server(repos, env=env)
        second = None
        try:
            tok = first.token(new_user())
            mark = marker()
            script = ("(exec -a %s sleep 4)\necho survived > survived.txt\necho run-complete\n" % mark)
            tid = start_task(first, tok, script, repos.url("octo/demo"))
            wait_for(lambda: pgrep(mark), timeout=15, what="the task's sleeper")
            self.assertEqual(task_row(first, tok, tid)["status"], "running")
            self.assertNotEqual(sandbox_dirs(first), [])
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(10)
            # The sandbox dies with its parent.
            self.assertEqual(wait_no_process(mark, timeout=5), [], "sandbox processes outlived the killed server")
            self.assertEqual(wait_no_process(first.data_dir, timeout=5), [], "bwrap processes left behind")
            second = task_server(repos, env=env, data_dir=first.data_dir)
            t = wait_task(second, tok, tid, timeout=40)
            self.assertNotEqual(t["status"], "running")
            wait_for(lambda: sandbox_dirs(second) == [], timeout=10, what="sandboxes/ to be emptied")
            self.assertEqual(wait_no_process(first.data_dir, timeout=5), [], "bwrap processes left behind")
            _, _, evs, _ = read_sse(second, "/api/tasks/%d/events" % tid, token=tok)
            self.assertEqual(evs[-1]["event"], "end")
            return t, evs
        finally:
            if second:
                second.close()
            first.close()
            repos.close()

    def test_healthy_long_task_keeps_its_lease(self):
        """A task running for several lease periods is renewed, not recovered as interrupted."""
        repos = GitRepos()
        repos.make("octo/demo", {"README.md": "hi\n"})
        srv = task_server(repos, env={"TASK_LEASE_SECONDS": "2"})
        try:
            tok = srv.token(new_user())
            tid = start_task(srv, tok, "sleep 7\necho long-done > done.txt\n", repos.url("octo/demo"))
            t = wait_task(srv, tok, tid, timeout=30)
            self.assertEqual(t["status"], "completed", t["error"])
            _, _, evs, _ = read_sse(srv, "/api/tasks/%d/events" % tid, token=tok)
            statuses = [e["data"]["data"]["status"] for e in evs if e["event"] == "status"]
            self.assertEqual(statuses, ["pending", "running", "completed"])
            self.assertNotIn("recovered", srv.log_text())
        finally:
            srv.close()
            repos.close()

    def test_graceful_stop_then_restart(self):
        """SIGTERM mid-task (a deploy): after the restart the task is not left running."""
        repos = GitRepos()
        repos.make("octo/demo", {"README.md": "hi\n"})
        env = {"TASK_LEASE_SECONDS": "3"}
        first = task_server(repos, env=env)
        second = None
        try:
            tok = first.token(new_user())
            mark = marker()
            tid = start_task(first, tok, "(exec -a %s sleep 4)\necho ok > ok.txt\n" % mark, repos.url("octo/demo"))
            wait_for(lambda: pgrep(mark), timeout=15, what="the task's sleeper")
            first.stop(signal.SIGTERM, timeout=30)
            self.assertEqual(wait_no_process(mark, timeout=5), [], "sandbox processes outlived the server")
            second = task_server(repos, env=env, data_dir=first.data_dir)
            t = wait_task(second, tok, tid, timeout=40)
            self.assertIn(t["status"], ("completed", "failed"))
            if t["status"] == "completed":
                self.assertIn("ok.txt", t["changed_files"])
            else:
                self.assertIsInstance(t["error"], str)
            wait_for(lambda: sandbox_dirs(second) == [], timeout=10, what="sandboxes/ to be emptied")
        finally:
            if second:
                second.close()
            first.close()
            repos.close()

    def test_interrupted_task_is_rerun(self):
        t, evs = self.run_crash(max_attempts=2)
        self.assertEqual(t["status"], "completed", t["error"])
        self.assertIn("survived.txt", t["changed_files"])
        self.assertIn("run-complete", assistant_messages(t)[-1])
        self.assertEqual(len(assistant_messages(t)), 1, "one answer, not one per attempt")
        statuses = [e["data"]["data"]["status"] for e in evs if e["event"] == "status"]
        self.assertEqual(statuses.count("running"), 2, statuses)
        self.assertEqual(statuses[-1], "completed")

    def test_interrupted_task_fails_after_max_attempts(self):
        t, evs = self.run_crash(max_attempts=1)
        self.assertEqual(t["status"], "failed")
        self.assertRegex(t["error"], r"(?i)interrupt|stopped|restart")
        self.assertIsNotNone(t["completed_at"])
        statuses = [e["data"]["data"]["status"] for e in evs if e["event"] == "status"]
        self.assertEqual(statuses[-1], "failed")


if __name__ == "__main__":
    unittest.main()
