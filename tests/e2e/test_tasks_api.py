"""E2E (issue #3): the task API with the `shell` agent, real git (a bare repository
served over smart HTTP by tests/fakes/git_http.py) and real bubblewrap.

start-task shape, task-status fields, the /api/tasks map (prompt cut to 50 chars,
has_patch, filters), the full row, git-diff, exact results (create, modify, delete,
rename, binary, chmod: changed_files, git_diff, git_patch that applies, file_changes
with the original's markers), a run without changes, an agent crash, injection in the
prompt, Idempotency-Key, and ownership of every task route.
"""
import os
import subprocess
import tempfile
import unittest
import uuid

from fakes.tasks_kit import (GitRepos, ISO_UTC, SHA1, assistant_messages, start_task, task_server,
                             wait_task, db_query)
from harness import new_user

BIN_BYTES = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x01\xff\xfe binary \x00 payload\n"

FILES = {
    "README.md": "# demo\n",
    "src/app.py": "print('v1')\n",
    "old.txt": "old name\n",
    "gone.txt": "gone\n",
    "tool.sh": "echo tool\n",
    "keep.txt": "keep\n",
}

# Creates, modifies, deletes, renames, adds a binary file and makes a file executable.
CHANGES_SCRIPT = r"""set -e
echo "print('v2')" > src/app.py
echo created > created.txt
mkdir -p nested/dir && echo deep > nested/dir/deep.txt
rm gone.txt
mv old.txt renamed.txt
printf '\211PNG\r\n\032\n\000\000\000\001\377\376 binary \000 payload\n' > assets/new.bin
chmod +x tool.sh
echo "all-changes-made"
"""

# 60 two-byte characters: cut at 50 characters (not bytes) + "...".
LONG_PROMPT = "# " + "\u00e9" * 60 + "\necho long-prompt\n"


class TaskApiTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.repos = GitRepos()
        cls.repos.make("octo/demo", FILES, binary=True, executable=True)
        cls.url = cls.repos.url("octo/demo")
        cls.srv = task_server(cls.repos, env={"MAX_CONCURRENT_TASKS": "8", "MAX_TASKS_PER_USER": "8"})
        cls.user = new_user()
        cls.tok = cls.srv.token(cls.user)
        cls.tok2 = cls.srv.token(new_user())  # for tests whose tasks must not show in the main user's list
        r = cls.srv.request("POST", "/api/projects", token=cls.tok,
                            body={"name": "demo", "repo_url": "https://github.com/octo/demo"})
        assert r.status == 200, r
        cls.project_id = r.json["project"]["id"]
        cls.pwned = "/tmp/pwned-" + uuid.uuid4().hex
        cls.injection_prompt = (
            "touch %s; echo \"uid=$(id -u)\" `hostname` ; echo '$HOME' && echo $((6*7)) > calc.txt | cat; "
            "x='; rm -rf / ;' ; echo \"${x}\" > quoted.txt; echo done\n" % cls.pwned)
        cls.start_responses = {}
        prompts = {
            "changes": (CHANGES_SCRIPT, {"project_id": cls.project_id}),
            "nochange": ("echo nothing to change here\n", {}),
            "long": (LONG_PROMPT, {}),
            "crash": ("echo about to crash; exit 3\n", {}),
            "inject": (cls.injection_prompt, {}),
        }
        cls.ids = {}
        for name, (prompt, extra) in prompts.items():
            body = {"prompt": prompt, "repo_url": cls.url, "model": "shell"}
            body.update(extra)
            r = cls.srv.request("POST", "/api/start-task", token=cls.tok, body=body)
            assert r.status == 200, r
            cls.start_responses[name] = r
            cls.ids[name] = r.json["task_id"]
        cls.tasks = {name: wait_task(cls.srv, cls.tok, tid, timeout=60) for name, tid in cls.ids.items()}

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()
        cls.repos.close()

    def assertJsonError(self, r, status):
        self.assertEqual(r.status, status, r)
        self.assertTrue(r.headers.get("content-type", "").startswith("application/json"), r.headers)
        self.assertIsInstance(r.json, dict, r)
        self.assertIsInstance(r.json.get("error"), str, r)
        return r.json["error"]

    # -- start-task and status -------------------------------------------------------
    def test_start_task_response_shape(self):
        ids = set()
        for name, r in self.start_responses.items():
            self.assertTrue(r.headers["content-type"].startswith("application/json"))
            self.assertEqual(set(r.json), {"status", "task_id", "message"}, r.body)
            self.assertEqual(r.json["status"], "success")
            self.assertIs(type(r.json["task_id"]), int)
            self.assertIsInstance(r.json["message"], str)
            ids.add(r.json["task_id"])
        self.assertEqual(len(ids), len(self.start_responses), "every start-task made a new task")

    def test_tasks_reach_their_final_status(self):
        for name in ("changes", "nochange", "long", "inject"):
            self.assertEqual(self.tasks[name]["status"], "completed", (name, self.tasks[name]["error"]))
        self.assertEqual(self.tasks["crash"]["status"], "failed")

    def test_task_status_fields(self):
        tid = self.ids["changes"]
        r = self.srv.request("GET", "/api/task-status/%d" % tid, token=self.tok)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "success")
        t = r.json["task"]
        for k in ("id", "status", "prompt", "repo_url", "branch", "model", "commit_hash", "changed_files",
                  "error", "created_at", "project_id"):
            self.assertIn(k, t)
        self.assertEqual(t["id"], tid)
        self.assertEqual(t["status"], "completed")
        self.assertEqual(t["prompt"], CHANGES_SCRIPT)
        self.assertEqual(t["repo_url"], self.url)
        self.assertEqual(t["branch"], "main")
        self.assertEqual(t["model"], "shell")
        self.assertRegex(t["commit_hash"], SHA1)
        self.assertIsInstance(t["changed_files"], list)
        self.assertIsNone(t["error"])
        self.assertRegex(t["created_at"], ISO_UTC)
        self.assertEqual(t["project_id"], self.project_id)
        # The unprefixed route (the original README's paths) answers the same.
        r2 = self.srv.request("GET", "/task-status/%d" % tid, token=self.tok)
        self.assertEqual(r2.status, 200)
        self.assertEqual(r2.json["task"]["commit_hash"], t["commit_hash"])
        # A failed task: readable error, no commit.
        c = self.srv.request("GET", "/api/task-status/%d" % self.ids["crash"], token=self.tok).json["task"]
        self.assertEqual(c["status"], "failed")
        self.assertIsNone(c["commit_hash"])
        self.assertIsInstance(c["error"], str)
        self.assertIn("3", c["error"])
        self.assertNotIn("traceback", c["error"].lower())
        self.assertNotIn(".lua:", c["error"])

    def test_timestamps_are_iso_utc(self):
        for name, t in self.tasks.items():
            for k in ("created_at", "updated_at", "started_at", "completed_at"):
                self.assertRegex(t[k] or "", ISO_UTC, (name, k, t[k]))
            self.assertGreaterEqual(len(t["chat_messages"]), 1)
            for m in t["chat_messages"]:
                self.assertRegex(m.get("timestamp") or "", ISO_UTC, (name, m))
            self.assertLessEqual(t["created_at"], t["started_at"])
            self.assertLessEqual(t["started_at"], t["completed_at"])

    # -- list ------------------------------------------------------------------------
    def list(self, query="", token=None):
        return self.srv.request("GET", "/api/tasks" + query, token=token or self.tok)

    def test_list_is_a_map_keyed_by_id(self):
        r = self.list()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "success")
        tasks = r.json["tasks"]
        self.assertIsInstance(tasks, dict)
        self.assertEqual(set(tasks), {str(i) for i in self.ids.values()})
        self.assertIs(type(r.json["total_tasks"]), int)
        self.assertEqual(r.json["total_tasks"], len(self.ids))
        for key, t in tasks.items():
            self.assertEqual(str(t["id"]), key)
            self.assertIs(type(t["has_patch"]), bool)
            self.assertIsInstance(t["chat_messages"], list)
            self.assertIn(t["status"], ("completed", "failed"))
        self.assertTrue(tasks[str(self.ids["changes"])]["has_patch"])
        self.assertFalse(tasks[str(self.ids["nochange"])]["has_patch"])
        self.assertFalse(tasks[str(self.ids["crash"])]["has_patch"])
        # Prompt: the first 50 characters (not bytes) + "..."; short prompts untouched.
        self.assertEqual(tasks[str(self.ids["long"])]["prompt"], LONG_PROMPT[:50] + "...")
        self.assertEqual(tasks[str(self.ids["nochange"])]["prompt"], "echo nothing to change here\n")
        self.assertEqual([m["role"] for m in tasks[str(self.ids["changes"])]["chat_messages"]],
                         ["user", "assistant"])
        # Another user sees none of them.
        other = self.srv.token(new_user())
        r = self.list(token=other)
        self.assertEqual((r.status, r.json["tasks"], r.json["total_tasks"]), (200, {}, 0))

    def test_list_filters(self):
        r = self.list("?status=failed")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(set(r.json["tasks"]), {str(self.ids["crash"])})
        self.assertEqual(r.json["total_tasks"], 1)
        r = self.list("?status=completed")
        self.assertEqual(set(r.json["tasks"]), {str(self.ids[n]) for n in ("changes", "nochange", "long", "inject")})
        r = self.list("?status=running")
        self.assertEqual(r.json["tasks"], {})
        # Newest first; limit/offset page through them.
        newest = max(self.ids.values())
        r = self.list("?limit=1")
        self.assertEqual(list(r.json["tasks"]), [str(newest)])
        seen = []
        for off in range(len(self.ids)):
            page = self.list("?limit=1&offset=%d" % off).json["tasks"]
            self.assertEqual(len(page), 1, off)
            seen += list(page)
        self.assertEqual(sorted(seen), sorted(str(i) for i in self.ids.values()))
        self.assertEqual(self.list("?limit=2&offset=%d" % len(self.ids)).json["tasks"], {})
        r = self.list("?project_id=%d" % self.project_id)
        self.assertEqual(set(r.json["tasks"]), {str(self.ids["changes"])})

    def test_list_bad_filters_are_400(self):
        for q in ("?limit=abc", "?limit=0", "?limit=-1", "?limit=1.5", "?offset=-1", "?offset=x",
                  "?status=bogus", "?status=RUNNING", "?limit=100000"):
            with self.subTest(q=q):
                self.assertJsonError(self.list(q), 400)

    # -- full row and diff ------------------------------------------------------------
    def test_full_row(self):
        tid = self.ids["changes"]
        t = self.tasks["changes"]
        for k in ("id", "user_id", "project_id", "status", "agent", "repo_url", "target_branch", "pr_branch",
                  "container_id", "commit_hash", "pr_number", "pr_url", "git_diff", "git_patch", "changed_files",
                  "error", "chat_messages", "execution_metadata", "created_at", "updated_at", "started_at",
                  "completed_at"):
            self.assertIn(k, t)
        self.assertEqual(t["id"], tid)
        self.assertEqual(t["user_id"], self.user)
        self.assertEqual(t["agent"], "shell")
        self.assertEqual(t["target_branch"], "main")
        self.assertIsNone(t["pr_url"])
        self.assertIsInstance(t["execution_metadata"], dict)
        self.assertEqual([m["role"] for m in t["chat_messages"]], ["user", "assistant"])
        self.assertEqual(t["chat_messages"][0]["content"], CHANGES_SCRIPT)
        self.assertIn("all-changes-made", t["chat_messages"][1]["content"])
        for secret_col in ("lease_owner", "idempotency_key", "cancel_requested"):
            self.assertNotIn(secret_col, t, "engine internals are not part of the API row")

    def test_git_diff_route(self):
        tid = self.ids["changes"]
        r = self.srv.request("GET", "/api/git-diff/%d" % tid, token=self.tok)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "success")
        self.assertEqual(r.json["task_id"], tid)
        self.assertEqual(r.json["git_diff"], self.tasks["changes"]["git_diff"])
        self.assertIn("created.txt", r.json["git_diff"])
        r = self.srv.request("GET", "/api/git-diff/999999", token=self.tok)
        self.assertJsonError(r, 404)

    # -- results exactness ------------------------------------------------------------
    def test_results_exactness(self):
        t = self.tasks["changes"]
        self.assertEqual(t["status"], "completed", t["error"])
        self.assertRegex(t["commit_hash"], SHA1)
        changed = t["changed_files"]
        self.assertIsInstance(changed, list)
        for path in ("src/app.py", "created.txt", "nested/dir/deep.txt", "gone.txt", "renamed.txt",
                     "assets/new.bin", "tool.sh"):
            self.assertIn(path, changed)
        for path in ("README.md", "keep.txt", "assets/logo.bin", "scripts/run.sh"):
            self.assertNotIn(path, changed)
        diff, patch = t["git_diff"], t["git_patch"]
        for path in ("src/app.py", "created.txt", "nested/dir/deep.txt", "gone.txt", "renamed.txt",
                     "assets/new.bin", "tool.sh"):
            self.assertIn(path, diff)
            self.assertIn(path, patch)
        self.assertIn("+print('v2')", diff)
        self.assertIn("-print('v1')", diff)
        self.assertRegex(diff, r"deleted file mode 100644\n(index .*\n)?--- a/gone.txt")
        self.assertIn("old mode 100644\nnew mode 100755", diff)
        self.assertIn("GIT binary patch", patch, "the patch must carry the binary file's bytes")
        self.assertTrue(patch.startswith("From "), patch[:80])
        fc = {c["filename"]: c for c in t["execution_metadata"]["file_changes"]}
        self.assertEqual(set(fc) - set(changed), set(), "file_changes describe changed files only")
        for c in t["execution_metadata"]["file_changes"]:
            self.assertEqual(set(c), {"filename", "before", "after"})
        self.assertEqual((fc["created.txt"]["before"], fc["created.txt"]["after"]), ("FILE_NOT_EXISTS", "created\n"))
        self.assertEqual((fc["gone.txt"]["before"], fc["gone.txt"]["after"]), ("gone\n", "FILE_DELETED"))
        self.assertEqual((fc["src/app.py"]["before"], fc["src/app.py"]["after"]), ("print('v1')\n", "print('v2')\n"))
        self.assertEqual(fc["nested/dir/deep.txt"]["before"], "FILE_NOT_EXISTS")
        self.assertEqual(fc["renamed.txt"]["after"], "old name\n")
        self.assertEqual(fc["tool.sh"]["after"], "echo tool\n")

    def test_patch_applies_exactly_to_the_base(self):
        """The stored git_patch, applied with git am on a fresh clone, reproduces the run's tree:
        binary bytes, deletion, rename and the executable bit included."""
        t = self.tasks["changes"]
        work = tempfile.mkdtemp(prefix="aicode-am-")
        env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull,
                   GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.test")
        subprocess.run(["git", "clone", "-q", self.repos.path("octo/demo"), work], check=True, env=env)
        r = subprocess.run(["git", "am", "--keep-cr"], cwd=work, input=t["git_patch"].encode(), env=env,
                           capture_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)

        def content(p):
            with open(os.path.join(work, p), "rb") as f:
                return f.read()
        self.assertEqual(content("assets/new.bin"), BIN_BYTES)
        self.assertEqual(content("src/app.py"), b"print('v2')\n")
        self.assertEqual(content("renamed.txt"), b"old name\n")
        self.assertEqual(content("nested/dir/deep.txt"), b"deep\n")
        self.assertFalse(os.path.exists(os.path.join(work, "gone.txt")))
        self.assertFalse(os.path.exists(os.path.join(work, "old.txt")))
        self.assertTrue(os.stat(os.path.join(work, "tool.sh")).st_mode & 0o100, "tool.sh is executable")
        # The diff between the base and the applied commit is the stored git_diff.
        d = subprocess.run(["git", "diff", "HEAD~1", "HEAD"], cwd=work, env=env, capture_output=True, text=True)
        self.assertEqual(d.stdout, t["git_diff"])
        # The commit is the bot's, not root's.
        author = subprocess.run(["git", "log", "-1", "--format=%an <%ae>"], cwd=work, env=env,
                                capture_output=True, text=True).stdout.strip()
        self.assertNotIn("root", author)

    def test_rename_reports_both_paths(self):
        """A rename removes the old path: changed_files and file_changes must say so (the diff
        view would otherwise show a copy, with old.txt still there)."""
        t = self.tasks["changes"]
        self.assertIn("renamed.txt", t["changed_files"])
        self.assertIn("old.txt", t["changed_files"])
        fc = {c["filename"]: c for c in t["execution_metadata"]["file_changes"]}
        self.assertIn("old.txt", fc)
        self.assertEqual((fc["old.txt"]["before"], fc["old.txt"]["after"]), ("old name\n", "FILE_DELETED"))

    def test_run_without_changes(self):
        t = self.tasks["nochange"]
        self.assertEqual(t["status"], "completed", t["error"])
        self.assertIn(t["git_patch"], ("", None))
        self.assertIn(t["git_diff"], ("", None))
        self.assertEqual(t["changed_files"], [])
        self.assertEqual(t["execution_metadata"].get("file_changes", []), [])
        answers = assistant_messages(t)
        self.assertEqual(len(answers), 1)
        self.assertIn("nothing to change here", answers[0])
        self.assertRegex(answers[0].lower(), r"no changes")

    def test_agent_crash_fails(self):
        t = self.tasks["crash"]
        self.assertEqual(t["status"], "failed")
        self.assertIsNone(t["commit_hash"])
        self.assertIn(t["git_patch"], ("", None))
        self.assertRegex(t["error"], r"\b3\b")
        self.assertLess(len(t["error"]), 2000)

    # -- injection ----------------------------------------------------------------------
    def test_prompt_is_only_the_shell_agents_script(self):
        t = self.tasks["inject"]
        self.assertEqual(t["status"], "completed", t["error"])
        self.assertFalse(os.path.exists(self.pwned), "the prompt ran on the host")
        out = assistant_messages(t)[0]
        self.assertIn("uid=1000 aicode-sandbox", out, "the script ran, inside the sandbox")
        self.assertIn("$HOME", out, "single quotes kept literal")
        fc = {c["filename"]: c for c in t["execution_metadata"]["file_changes"]}
        self.assertEqual(fc["calc.txt"]["after"], "42\n")
        self.assertEqual(fc["quoted.txt"]["after"], "; rm -rf / ;\n")
        self.assertEqual(t["chat_messages"][0]["content"], self.injection_prompt, "prompt stored verbatim")

    def test_branch_with_shell_metacharacters_is_only_a_ref(self):
        """A valid ref name full of shell metacharacters is used as a ref, never as shell:
        the clone checks out exactly that branch, and nothing runs on the host."""
        marker = "/tmp/pwned-ref-" + uuid.uuid4().hex
        branch = "feat;touch${IFS}%s&&$(id)|`id`" % marker
        self.repos.make("octo/weird", {"w.txt": "weird\n"}, branch=branch)
        tid = start_task(self.srv, self.tok2, "git branch --show-current; cat w.txt\n", self.repos.url("octo/weird"),
                         branch=branch)
        t = wait_task(self.srv, self.tok2, tid)
        self.assertEqual(t["status"], "completed", t["error"])
        self.assertEqual(t["target_branch"], branch)
        self.assertEqual(assistant_messages(t)[0].split("\n")[0], branch)
        self.assertFalse(os.path.exists(marker), "the branch name ran as a command on the host")
        # A metacharacter branch that does not exist: a clean clone failure, nothing run.
        tid = start_task(self.srv, self.tok2, "echo hi\n", self.url, branch="nope;touch${IFS}" + marker)
        t = wait_task(self.srv, self.tok2, tid)
        self.assertEqual(t["status"], "failed")
        self.assertRegex(t["error"], r"(?i)clone")
        self.assertFalse(os.path.exists(marker))

    # -- idempotency ---------------------------------------------------------------------
    def test_idempotency_key(self):
        a, b = new_user(), new_user()
        ta, tb = self.srv.token(a), self.srv.token(b)
        key = "idem-" + uuid.uuid4().hex
        body = {"prompt": "echo idem\n", "repo_url": self.url, "model": "shell"}
        r1 = self.srv.request("POST", "/api/start-task", token=ta, body=body, headers={"Idempotency-Key": key})
        r2 = self.srv.request("POST", "/api/start-task", token=ta, body=body, headers={"Idempotency-Key": key})
        self.assertEqual((r1.status, r2.status), (200, 200), (r1, r2))
        self.assertEqual(r1.json["task_id"], r2.json["task_id"])
        r3 = self.srv.request("POST", "/api/start-task", token=tb, body=body, headers={"Idempotency-Key": key})
        self.assertEqual(r3.status, 200, r3)
        self.assertNotEqual(r3.json["task_id"], r1.json["task_id"])
        rows = db_query(self.srv, "SELECT user_id, count(*) AS n FROM tasks WHERE user_id IN (?, ?) "
                                  "GROUP BY user_id", (a, b))
        self.assertEqual({row["user_id"]: row["n"] for row in rows}, {a: 1, b: 1})
        # Without a key, the same body makes a new task.
        r4 = self.srv.request("POST", "/api/start-task", token=ta, body=body)
        self.assertNotEqual(r4.json["task_id"], r1.json["task_id"])
        for tok, tid in ((ta, r1.json["task_id"]), (tb, r3.json["task_id"]), (ta, r4.json["task_id"])):
            self.assertEqual(wait_task(self.srv, tok, tid)["status"], "completed")
        # A retry after completion still returns the same task, and runs nothing again.
        r5 = self.srv.request("POST", "/api/start-task", token=ta, body=body, headers={"Idempotency-Key": key})
        self.assertEqual(r5.json["task_id"], r1.json["task_id"])
        t = wait_task(self.srv, ta, r1.json["task_id"])
        self.assertEqual(len(assistant_messages(t)), 1)

    def test_idempotency_key_concurrent_retries(self):
        """Ten simultaneous requests with one key (a client retrying on a flaky network): one task."""
        import threading
        uid = new_user()
        tok = self.srv.token(uid)
        key = "race-" + uuid.uuid4().hex
        body = {"prompt": "echo race\n", "repo_url": self.url, "model": "shell"}
        results = []

        def go():
            r = self.srv.request("POST", "/api/start-task", token=tok, body=body, headers={"Idempotency-Key": key})
            results.append((r.status, (r.json or {}).get("task_id")))
        threads = [threading.Thread(target=go) for _ in range(10)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        self.assertEqual([s for s, _ in results], [200] * 10, results)
        self.assertEqual(len({tid for _, tid in results}), 1, results)
        rows = db_query(self.srv, "SELECT count(*) AS n FROM tasks WHERE user_id = ?", (uid,))
        self.assertEqual(rows[0]["n"], 1)
        self.assertEqual(wait_task(self.srv, tok, results[0][1])["status"], "completed")

    # -- ownership -------------------------------------------------------------------------
    def test_every_task_route_is_owner_scoped(self):
        other = self.srv.token(new_user())
        tid = self.ids["changes"]
        calls = [
            ("GET", "/api/task-status/%d" % tid, None),
            ("GET", "/api/tasks/%d" % tid, None),
            ("GET", "/api/git-diff/%d" % tid, None),
            ("POST", "/api/tasks/%d/chat" % tid, {"content": "echo hijack > hijack.txt"}),
            ("POST", "/api/tasks/%d/cancel" % tid, None),
            ("GET", "/api/tasks/%d/events" % tid, None),
            ("POST", "/api/tasks/%d/events-token" % tid, None),
            ("POST", "/api/create-pr/%d" % tid, {"github_token": "ghs_whatever"}),
            ("GET", "/tasks/%d" % tid, None),
            ("GET", "/git-diff/%d" % tid, None),
        ]
        for method, path, body in calls:
            with self.subTest(path=path):
                r = self.srv.request(method, path, token=other, body=body if body is not None else
                                     ({} if method == "POST" else None))
                self.assertJsonError(r, 404)
                self.assertNotIn(CHANGES_SCRIPT[:20], r.body)
        # Nothing changed for the owner.
        t = wait_task(self.srv, self.tok, tid)
        self.assertEqual(t["status"], "completed")
        self.assertEqual(len(t["chat_messages"]), 2)
        self.assertNotIn("hijack", t["git_diff"])

    def test_unknown_task_is_404(self):
        for method, path in (("GET", "/api/task-status/987654"), ("GET", "/api/tasks/987654"),
                             ("POST", "/api/tasks/987654/cancel"), ("GET", "/api/tasks/987654/events")):
            with self.subTest(path=path):
                self.assertJsonError(self.srv.request(method, path, token=self.tok,
                                                      body={} if method == "POST" else None), 404)

    def test_task_routes_need_auth(self):
        tid = self.ids["changes"]
        for method, path in (("GET", "/api/task-status/%d" % tid), ("GET", "/api/tasks"),
                             ("POST", "/api/start-task"), ("GET", "/api/tasks/%d/events" % tid)):
            with self.subTest(path=path):
                r = self.srv.request(method, path, body={} if method == "POST" else None)
                self.assertJsonError(r, 401)


if __name__ == "__main__":
    unittest.main()
