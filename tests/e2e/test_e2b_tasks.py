"""E2E (issue #4): the whole task workflow with SANDBOX_PROVIDER=e2b, through the HTTP API,
against the local E2B double (tests/fakes/e2b.py: control plane + envd over Connect, commands
really run under bubblewrap). E2B_API_URL and E2B_SANDBOX_URL both point at the double.

- Flow: a shell-agent task completes with exactly the expected diff / patch / changed_files
  (computed here by running the same script on a local clone), its events stream live, a
  follow-up chat builds on it, cancel kills the sandbox, create-pr goes through an E2B sandbox
  (git_http with a required token, github_api) and pushes exactly the change, and the real
  Claude Code CLI (template aicode-agents) works against the fake Anthropic API through the
  model proxy without the real key entering the sandbox.
- Timeout: TASK_TIMEOUT=5 fails the task and kills its sandbox.
- Faults (each on the double's knobs): 429 + Retry-After and a 5xx on create are retried; a
  stream dropped mid-run is re-attached and nothing is lost; an expiring sandbox, a bad key,
  an unknown template and a down envd fail the task with a clear error.
- Reaper: with E2B_REAP_INTERVAL_S=1, sandboxes tagged app=aicode whose task is finished or
  unknown are killed, a running task's sandbox is not, untagged ones are left alone. It reads
  every page of GET /v2/sandboxes (250 orphans over three pages of 100, one run), survives a
  next token that does not parse (400 Invalid next token: the rest on the next run) and stops
  after 50 pages when the next token never ends.
- The E2B key (a canary) is never in the server log, the database or any API answer.
After every test the double has no live sandbox (GET /_control) and no live process.
"""
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import unittest
import uuid

from fakes.e2b_kit import E2BDouble, e2b_task_server, wait_until
from fakes.tasks_kit import (SHA1, GitRepos, assistant_messages, db_dump, git_http, github_api, parse_sse,
                             read_sse, start_task, task_row, wait_task)
from harness import new_user

import anthropic_api  # noqa: E402  (tests/fakes, on sys.path through tasks_kit)
import openai_api  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CLAUDE_BIN = os.path.join(ROOT, "tools", "agents", "node_modules", ".bin", "claude")

GH_TOKEN = "ghs_e2b_e2e_" + uuid.uuid4().hex[:16]
BIN = b"\x00\x01\x02\xfe\xff binary\x00\n"

FILES = {"README.md": "# demo\n", "old.txt": "old name\n", "gone.txt": "gone\n", "tool.sh": "echo tool\n",
         "src/app.py": "print('v1')\n"}

MAIN_SCRIPT = r"""set -e
echo "print('v2')" > src/app.py
echo created > created.txt
rm gone.txt
mv old.txt renamed.txt
mkdir -p assets && printf '\000\001\002\376\377 binary\000\n' > assets/new.bin
chmod +x tool.sh
echo line-one
echo to-stderr >&2
sleep 1
echo line-two
env
"""

FOLLOWUP = "test -f created.txt && echo saw-created\necho again >> created.txt\necho followup-done\n"

# The script of the dropped-stream tests: one line a second.
FIVE_LINES = "for i in $(seq 5); do echo $i; sleep 1; done\n"


def run_locally(repos, name, script):
    """Runs `script` with bash on a fresh local clone, commits -> (base, diff, names, tree) computed
    exactly as the engine does (git diff base HEAD; --name-only --no-renames)."""
    work = tempfile.mkdtemp(prefix="aicode-e2b-expected-")
    try:
        git_http._git(["clone", "-q", repos.path(name), work])
        base = git_http._git(["rev-parse", "HEAD"], cwd=work).stdout.decode().strip()
        subprocess.run(["bash", "-s"], input=script.encode(), cwd=work, check=True, capture_output=True)
        git_http._git(["add", "-A"], cwd=work)
        env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@e", GIT_COMMITTER_NAME="t",
                   GIT_COMMITTER_EMAIL="t@e")
        git_http._git(["commit", "-q", "-m", "x"], cwd=work, env=env)
        diff = git_http._git(["diff", base, "HEAD"], cwd=work).stdout.decode()
        names = git_http._git(["diff", "--name-only", "--no-renames", base, "HEAD"], cwd=work).stdout.decode()
        tree = git_http._git(["rev-parse", "HEAD^{tree}"], cwd=work).stdout.decode().strip()
        return base, diff, names.split(), tree
    finally:
        shutil.rmtree(work, ignore_errors=True)


def apply_patch_tree(repos, name, base, patch):
    work = tempfile.mkdtemp(prefix="aicode-e2b-am-")
    try:
        git_http._git(["clone", "-q", repos.path(name), work])
        git_http._git(["checkout", "-q", base], cwd=work)
        env = dict(os.environ, GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@e")
        git_http._git(["am", "-q"], cwd=work, env=env, input=patch.encode())
        return git_http._git(["rev-parse", "HEAD^{tree}"], cwd=work).stdout.decode().strip()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def events_of(srv, tok, tid):
    status, _, events, raw = read_sse(srv, "/api/tasks/%d/events" % tid, token=tok)
    srv.responses.add(raw)
    assert status == 200, status
    return events


def output_text(events, stream=None):
    return "".join(e["data"]["data"].get("text", "") for e in events if e["event"] == "output"
                   and (stream is None or e["data"]["data"].get("stream") == stream))


def follow_events(srv, tok, tid, on_event=None, timeout=60):
    """Reads the task's SSE stream live in a thread; on_event(event) for each. -> (thread, box)"""
    box = {"events": []}

    def run():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
            conn.request("GET", "/api/tasks/%d/events" % tid, headers={"Authorization": "Bearer " + tok})
            resp = conn.getresponse()
            box["status"] = resp.status
            block, raw = [], []
            while True:
                line = resp.readline()
                if not line:
                    break
                line = line.decode("utf-8", errors="replace")
                raw.append(line)
                if line in ("\n", "\r\n"):
                    for e in parse_sse("".join(block) + "\n\n"):
                        e["t"] = time.time()
                        box["events"].append(e)
                        if on_event:
                            on_event(e)
                    block = []
                else:
                    block.append(line)
            conn.close()
            box["raw"] = "".join(raw)
            srv.responses.add(box["raw"])
        except Exception as e:  # reported by the test that reads the box
            box["error"] = e
    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, box


class E2BTestCase(unittest.TestCase):
    """Each test ends with nothing left in the double: no live sandbox, no live process."""
    double = None

    def setUp(self):
        self.double.reset_faults()

    def tearDown(self):
        self.double.reset_faults()
        left = wait_until(lambda: not self.double.live(), timeout=5)
        live = self.double.live()
        procs = self.double.server.live_processes()
        for s in live:  # leave the next test a clean double whatever happened
            self.double.control({"kill": s["sandboxID"]})
        self.assertTrue(left, "sandboxes left running in the double: %s" % [
            (s["sandboxID"], s["metadata"]) for s in live])
        self.assertEqual(procs, [], "sandbox processes left running")

    def assert_key_never_leaked(self, srv, tok, extra_secrets=()):
        """The E2B key (canary) is in no server log line, no database row and no API answer
        (every task's row and events are fetched first, so they are among the answers)."""
        r = srv.request("GET", "/api/tasks?limit=500", token=tok)
        self.assertEqual(r.status, 200, r)
        for tid in sorted(int(k) for k in r.json["tasks"]):
            task_row(srv, tok, tid)
            events_of(srv, tok, tid)
        key = self.double.key
        log, dump, answers = srv.log_text(), db_dump(srv), srv.responses.text()
        self.assertTrue(log and dump and answers)
        for secret in (key, key[4:]) + tuple(extra_secrets):
            self.assertNotIn(secret, log, "secret in the server log")
            self.assertNotIn(secret, dump, "secret in the database")
            self.assertNotIn(secret, answers, "secret in an API answer")

    def assert_clean_error(self, task, *patterns):
        err = task["error"]
        self.assertIsInstance(err, str, task)
        for p in patterns:
            self.assertRegex(err, p)
        self.assertNotIn(self.double.key, err)
        self.assertNotIn("traceback", err.lower())
        self.assertNotIn("stack", err.lower())
        self.assertNotRegex(err, r"\.lua:\d+")


# -- the workflow --------------------------------------------------------------------------------

class E2BTaskFlowTests(E2BTestCase):
    @classmethod
    def setUpClass(cls):
        try:
            cls.prepare()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def prepare(cls):
        cls.tmp = tempfile.mkdtemp(prefix="aicode-e2b-e2e-")
        cls.double = E2BDouble()
        cls.anthropic_key = "sk-ant-CANARY" + uuid.uuid4().hex
        cls.anthropic_log = os.path.join(cls.tmp, "anthropic.jsonl")
        cls.anthropic, _, _ = anthropic_api.start(api_keys=[cls.anthropic_key], log=cls.anthropic_log)
        cls.openai_key = "sk-openai-CANARY" + uuid.uuid4().hex
        cls.openai_log = os.path.join(cls.tmp, "openai.jsonl")
        cls.openai, _, _ = openai_api.start(api_keys=[cls.openai_key], log=cls.openai_log)
        cls.repos = GitRepos(require_token=[GH_TOKEN])
        cls.repos.make("octo/demo", FILES, binary=True, executable=True)
        cls.repos.make("octo/pr", FILES)
        cls.repos.make("octo/claude", {"README.md": "claude\n"})
        cls.repos.make("octo/codex", {"README.md": "codex\n"})
        cls.gh, _, _ = github_api.start(root=cls.repos.root, tokens={GH_TOKEN: "octocat"})
        cls.srv = e2b_task_server(cls.double, cls.repos, env={
            "ANTHROPIC_API_KEY": cls.anthropic_key, "ANTHROPIC_BASE_URL": cls.anthropic.url,
            "OPENAI_API_KEY": cls.openai_key, "OPENAI_BASE_URL": cls.openai.url + "/v1",
            "GITHUB_API_URL": cls.gh.url, "MAX_CONCURRENT_TASKS": "8", "MAX_TASKS_PER_USER": "8"})
        cls.tok = cls.srv.token(new_user())
        # The main task (events followed live), the PR task and the claude task run side by side.
        cls.tid = cls.start(MAIN_SCRIPT, "octo/demo")
        cls.live_thread, cls.live = follow_events(cls.srv, cls.tok, cls.tid)
        cls.pr_tid = cls.start("echo changed > README.md\necho new > new.txt\nrm gone.txt\n", "octo/pr")
        cls.claude_tid = cls.codex_tid = None
        if os.path.exists(CLAUDE_BIN):
            cls.claude_tid = cls.start("\n".join([
                "Please save the environment.", "write hello.txt: hello from claude in e2b",
                "bash: env > env.txt", "reply: Saved from E2B."]), "octo/claude", model="claude")
            cls.codex_tid = cls.start("\n".join([
                "write hello.txt: hello from codex in e2b", "reply: Codex saved from E2B."]),
                "octo/codex", model="codex")
        cls.task = cls.wait(cls.tid)
        cls.live_thread.join(30)
        # All three done before the first test: each test ends by checking the double is empty.
        cls.wait(cls.pr_tid)
        if cls.claude_tid:
            cls.wait(cls.claude_tid)
            cls.wait(cls.codex_tid)

    @classmethod
    def tearDownClass(cls):
        for what in ("srv", "double", "anthropic", "openai", "gh", "repos"):
            try:
                getattr(cls, what).close()
            except Exception:
                pass
        if getattr(cls, "tmp", None):
            shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def start(cls, script, repo, model="shell"):
        return start_task(cls.srv, cls.tok, script, cls.repos.url(repo), model=model, github_token=GH_TOKEN)

    @classmethod
    def wait(cls, tid, timeout=60):
        return wait_task(cls.srv, cls.tok, tid, timeout=timeout)

    def test_shell_task_completes_with_exactly_the_change(self):
        t = self.task
        self.assertEqual(t["status"], "completed", t["error"])
        self.assertIsNone(t["error"])
        base, diff, names, tree = run_locally(self.repos, "octo/demo", MAIN_SCRIPT)
        self.assertEqual(t["git_diff"], diff)
        self.assertEqual(t["changed_files"], names)
        self.assertEqual(sorted(names), ["assets/new.bin", "created.txt", "gone.txt", "old.txt", "renamed.txt",
                                         "src/app.py", "tool.sh"])
        self.assertRegex(t["commit_hash"], SHA1)
        self.assertEqual(t["execution_metadata"]["base_commit"], base)
        self.assertIn("GIT binary patch", t["git_patch"])
        self.assertEqual(apply_patch_tree(self.repos, "octo/demo", base, t["git_patch"]), tree)
        fc = {c["filename"]: c for c in t["execution_metadata"]["file_changes"]}
        self.assertEqual((fc["created.txt"]["before"], fc["created.txt"]["after"]), ("FILE_NOT_EXISTS", "created\n"))
        self.assertEqual(fc["gone.txt"]["after"], "FILE_DELETED")
        answer = assistant_messages(t)[-1]
        self.assertIn("line-one", answer)
        self.assertIn("line-two", answer)
        # It ran in an E2B sandbox of the double, tagged with the task, and that sandbox is gone.
        self.assertRegex(t["container_id"] or "", r"^e2b:[a-z0-9]{20}$")
        sid = t["container_id"][4:]
        self.assertEqual(self.double.killed().get(sid), "killed")
        creates = [r for r in self.double.requests() if r["method"] == "POST" and r["path"] == "/sandboxes"
                   and r.get("sandbox_id") == sid]
        self.assertEqual(len(creates), 1)
        body = creates[0]["body"]
        self.assertEqual(body["templateID"], "aicode-agents")
        self.assertIs(body["secure"], True)
        self.assertEqual(body["metadata"]["task_id"], str(self.tid))
        self.assertEqual(body["metadata"]["app"], "aicode")
        self.assertIsInstance(body.get("timeout"), int)

    def test_events_stream_live(self):
        self.assertFalse(self.live_thread.is_alive(), "the event stream did not end")
        self.assertNotIn("error", self.live, self.live.get("error"))
        self.assertEqual(self.live["status"], 200)
        evs = self.live["events"]
        types = [e["event"] for e in evs]
        self.assertEqual(types[-1], "end")
        self.assertEqual(evs[-1]["data"], {"status": "completed"})
        self.assertTrue({"status", "step", "output", "result"} <= set(types), types)
        steps = [e["data"]["data"]["name"] for e in evs if e["event"] == "step"
                 and e["data"]["data"]["state"] == "finished"]
        self.assertEqual(steps[:2], ["create sandbox", "clone"])
        self.assertIn("run agent", steps)
        out = output_text(evs, "stdout")
        self.assertLess(out.index("line-one"), out.index("line-two"))
        self.assertIn("to-stderr", output_text(evs, "stderr"))
        # Live: line-one reached the client before line-two was printed (the script sleeps 1 s).
        t_one = min(e["t"] for e in evs if e["event"] == "output" and "line-one" in e["data"]["data"]["text"])
        t_two = min(e["t"] for e in evs if e["event"] == "output" and "line-two" in e["data"]["data"]["text"])
        self.assertGreater(t_two - t_one, 0.5)
        result = [e["data"]["data"] for e in evs if e["event"] == "result"][-1]
        self.assertEqual(result["changed_files"], self.task["changed_files"])
        self.assertEqual(result["commit_hash"], self.task["commit_hash"])

    def test_followup_chat(self):
        r = self.srv.request("POST", "/api/tasks/%d/chat" % self.tid, token=self.tok,
                             body={"content": FOLLOWUP, "github_token": GH_TOKEN})
        self.assertEqual(r.status, 200, r)
        t = self.wait(self.tid)
        self.assertEqual(t["status"], "completed", t["error"])
        answers = assistant_messages(t)
        self.assertEqual(len(answers), 2)
        self.assertIn("saw-created", answers[1])
        self.assertIn("followup-done", answers[1])
        _, diff, names, _ = run_locally(self.repos, "octo/demo", MAIN_SCRIPT + FOLLOWUP)
        self.assertEqual(t["git_diff"], diff)
        self.assertEqual(t["changed_files"], names)
        self.assertEqual(t["execution_metadata"]["runs"], 2)
        # A second E2B sandbox, tagged with the same task, created and killed.
        sids = [r["sandbox_id"] for r in self.double.requests() if r["method"] == "POST"
                and r["path"] == "/sandboxes" and r.get("status") == 201
                and r["body"]["metadata"].get("task_id") == str(self.tid)]
        self.assertGreaterEqual(len(sids), 2)
        self.assertEqual(t["container_id"], "e2b:" + sids[-1])

    def test_cancel_mid_run_kills_the_sandbox(self):
        tid = self.start("echo started\nsleep 30\necho never\n", "octo/demo")
        seen = threading.Event()
        th, box = follow_events(self.srv, self.tok, tid, on_event=lambda e: e["event"] == "output"
                                and "started" in (e["data"]["data"].get("text") or "") and seen.set())
        self.assertTrue(seen.wait(30), "no 'started' output: %s" % box)
        running = self.double.for_task(tid)
        self.assertEqual(len(running), 1, running)
        sid = running[0]["sandboxID"]
        self.assertTrue(any(p["running"] for p in running[0]["processes"]))
        t0 = time.time()
        r = self.srv.request("POST", "/api/tasks/%d/cancel" % tid, token=self.tok, body={})
        self.assertIn(r.status, (200, 202), r)
        t = self.wait(tid, timeout=15)
        self.assertEqual(t["status"], "cancelled", t["error"])
        self.assertLess(time.time() - t0, 5)
        th.join(10)
        self.assertEqual(box["events"][-1]["data"], {"status": "cancelled"})
        self.assertNotIn("never", output_text(box["events"]))
        state = self.double.control()
        self.assertEqual([s for s in state["sandboxes"] if s["sandboxID"] == sid], [])
        self.assertEqual(state["killed"].get(sid), "killed")

    def test_create_pr_through_an_e2b_sandbox(self):
        t = self.wait(self.pr_tid)
        self.assertEqual(t["status"], "completed", t["error"])
        main_before = self.repos.branches("octo/pr")["main"]
        mark = self.double.mark()
        r = self.srv.request("POST", "/api/create-pr/%d" % self.pr_tid, token=self.tok,
                             body={"github_token": GH_TOKEN, "title": "E2B PR"})
        self.assertEqual(r.status, 200, r)
        branch = "aicode/%d" % self.pr_tid
        self.assertEqual(r.json["branch"], branch)
        self.assertEqual(r.json["files_updated"], 3)
        self.assertEqual(self.repos.branches("octo/pr")["main"], main_before)
        self.assertEqual(self.repos.git("octo/pr", "diff", "main", branch), t["git_diff"])
        tree = git_http.tree(self.repos.root, "octo/pr", branch)
        self.assertNotIn("gone.txt", tree)
        self.assertEqual(git_http.read_file(self.repos.root, "octo/pr", branch, "new.txt"), b"new\n")
        parents = self.repos.git("octo/pr", "rev-list", "--parents", "-n", "1", branch).split()
        self.assertEqual(parents[1:], [main_before])
        pr = [p for p in self.gh.pulls["octo/pr"] if p["number"] == r.json["pr_number"]][0]
        self.assertEqual((pr["head"]["ref"], pr["title"]), (branch, "E2B PR"))
        # The push went through an E2B sandbox of the double (tagged with the task), now killed.
        creates = [x for x in self.double.requests(mark) if x["method"] == "POST" and x["path"] == "/sandboxes"]
        self.assertEqual(len(creates), 1, creates)
        self.assertEqual(creates[0]["body"]["metadata"]["task_id"], str(self.pr_tid))
        self.assertEqual(self.double.killed().get(creates[0]["sandbox_id"]), "killed")
        pushes = [x for x in self.repos.requests() if x.get("service") == "receive-pack" and x.get("status") == 200]
        self.assertTrue(pushes)
        self.assertNotIn(GH_TOKEN, r.body)

    def test_codex_agent_through_the_model_proxy(self):
        self.assertIsNotNone(self.codex_tid, "tools/agents is not installed (make agents)")
        t = self.wait(self.codex_tid)
        self.assertEqual(t["status"], "completed", t["error"])
        self.assertEqual(assistant_messages(t), ["Codex saved from E2B."])
        self.assertEqual(t["changed_files"], ["hello.txt"])
        self.assertIn("+hello from codex in e2b", t["git_diff"])
        self.assertEqual(t["container_id"][:4], "e2b:")
        # The fake OpenAI API got every model request with the real key, swapped in by the proxy.
        with open(self.openai_log) as f:
            reqs = [json.loads(l) for l in f if l.strip()]
        posts = [r for r in reqs if r["method"] == "POST" and r["path"].endswith("/responses")]
        self.assertGreaterEqual(len(posts), 2)
        for r in posts:
            self.assertEqual(r["headers"].get("authorization"), "Bearer " + self.openai_key)
        self.assertNotIn(self.openai_key, json.dumps(t))

    def test_claude_agent_through_the_model_proxy(self):
        if self.claude_tid is None:
            self.skipTest("tools/agents is not installed (make agents)")
        t = self.wait(self.claude_tid)
        self.assertEqual(t["status"], "completed", t["error"])
        self.assertEqual(assistant_messages(t), ["Saved from E2B."])
        self.assertEqual(t["changed_files"], ["env.txt", "hello.txt"])
        self.assertIn("+hello from claude in e2b", t["git_diff"])
        # env.txt is only in the task's result: read it from the diff (it comes before hello.txt).
        env_part = t["git_diff"].split("diff --git a/hello.txt")[0]
        env = dict(l[1:].split("=", 1) for l in env_part.splitlines()
                   if l.startswith("+") and not l.startswith("+++") and "=" in l)
        # In the sandbox: the per-run proxy token and aicode's model proxy, not the real key.
        self.assertIn("ANTHROPIC_API_KEY", env)
        self.assertNotEqual(env["ANTHROPIC_API_KEY"], self.anthropic_key)
        self.assertIn("/internal/model", env.get("ANTHROPIC_BASE_URL", ""))
        self.assertNotIn(self.anthropic_key, t["git_diff"])
        self.assertNotIn(self.double.key, t["git_diff"])
        self.assertNotIn(GH_TOKEN, t["git_diff"])
        self.assertEqual(env.get("HOME"), "/home/user")  # it really ran in the E2B sandbox
        # The fake model API got every request with the real key (the proxy swapped it in).
        with open(self.anthropic_log) as f:
            reqs = [json.loads(l) for l in f if l.strip()]
        posts = [r for r in reqs if r["method"] == "POST" and r["path"].startswith("/v1/messages")]
        self.assertGreaterEqual(len(posts), 3)
        for r in posts:
            self.assertEqual(r["headers"].get("x-api-key"), self.anthropic_key)
        self.assertEqual(t["container_id"][:4], "e2b:")
        meta = t["execution_metadata"]
        self.assertGreater((meta.get("usage") or {}).get("output_tokens", 0), 0, meta)

    def test_z_e2b_key_never_leaks(self):
        # Runs last in the class (alphabetical order): everything above has happened.
        self.assert_key_never_leaked(self.srv, self.tok, (self.anthropic_key, GH_TOKEN))
        self.assertIn("line-one", db_dump(self.srv))  # the dump holds the events
        self.assertIn("line-one", self.srv.responses.text())
        # Not in the sandbox's environment either (the main script printed `env`).
        out = output_text(self.live["events"])
        self.assertIn("HOME=/home/user", out)
        self.assertNotIn("E2B", out)
        self.assertNotIn(self.anthropic_key, out)


# -- timeout -------------------------------------------------------------------------------------

class E2BTimeoutTests(E2BTestCase):
    @classmethod
    def setUpClass(cls):
        cls.double = E2BDouble()
        cls.repos = GitRepos()
        cls.repos.make("octo/demo", {"README.md": "hi\n"})
        cls.srv = e2b_task_server(cls.double, cls.repos, env={"TASK_TIMEOUT": "5"})
        cls.tok = cls.srv.token(new_user())

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()
        cls.double.close()
        cls.repos.close()

    def test_task_timeout_fails_and_kills_the_sandbox(self):
        t0 = time.time()
        tid = start_task(self.srv, self.tok, "echo started\nsleep 60\necho never\n", self.repos.url("octo/demo"))
        sb = wait_until(lambda: self.double.for_task(tid), timeout=10)
        self.assertTrue(sb, "no sandbox for the task")
        t = wait_task(self.srv, self.tok, tid, timeout=30)
        elapsed = time.time() - t0
        self.assertEqual((t["status"], t["error"]), ("failed", "Task timed out after 5 seconds"),
                         "after %.1f s" % elapsed)
        self.assertGreater(elapsed, 4.5)
        self.assertLess(elapsed, 20)  # 5 s plus the kill; generous for a loaded machine
        self.assertEqual(self.double.killed().get(sb[0]["sandboxID"]), "killed")
        self.assertNotIn("never", output_text(events_of(self.srv, self.tok, tid)))


# -- faults --------------------------------------------------------------------------------------

class E2BFaultTests(E2BTestCase):
    @classmethod
    def setUpClass(cls):
        cls.double = E2BDouble()
        cls.repos = GitRepos()
        cls.repos.make("octo/demo", {"README.md": "hi\n"})
        cls.srv = e2b_task_server(cls.double, cls.repos)
        cls.tok = cls.srv.token(new_user())

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()
        cls.double.close()
        cls.repos.close()

    def run_task(self, script="echo ok > ok.txt\necho done\n", timeout=60):
        tid = start_task(self.srv, self.tok, script, self.repos.url("octo/demo"))
        return tid, wait_task(self.srv, self.tok, tid, timeout=timeout)

    def creates(self, mark):
        return [r for r in self.double.requests(mark) if r["method"] == "POST" and r["path"] == "/sandboxes"]

    def test_create_429_retry_after_is_honoured(self):
        self.double.control({"create_429_next": 1, "retry_after": 2})
        mark = self.double.mark()
        _, t = self.run_task()
        self.assertEqual(t["status"], "completed", t["error"])
        c = self.creates(mark)
        self.assertEqual([r["status"] for r in c], [429, 201])
        self.assertGreaterEqual(c[1]["ts"] - c[0]["ts"], 1.9, "retried before Retry-After")
        self.assertLess(c[1]["ts"] - c[0]["ts"], 6)

    def test_create_5xx_once_is_retried(self):
        self.double.control({"create_5xx_next": 1, "create_5xx_status": 503})
        mark = self.double.mark()
        _, t = self.run_task()
        self.assertEqual(t["status"], "completed", t["error"])
        self.assertEqual([r["status"] for r in self.creates(mark)], [503, 201])

    def check_full_output(self, tid, t, lines_wanted):
        self.assertEqual(t["status"], "completed", t["error"])
        want = "".join("%s\n" % i for i in lines_wanted)
        answer = assistant_messages(t)[-1]
        self.assertTrue(answer.startswith(want), "answer %r, wanted all of %r once, in order" % (answer, want))
        # stdout becomes one output event per line (the engine splits it), without the newline.
        lines = [e["data"]["data"]["text"] for e in events_of(self.srv, self.tok, tid)
                 if e["event"] == "output" and e["data"]["data"].get("stream") == "stdout"]
        self.assertEqual(lines, [str(i) for i in lines_wanted], "output events")

    def test_stream_dropped_mid_run_is_reattached(self):
        # Every Start stream with at least 2 data events is cut (TCP FIN, no end-of-stream
        # frame) after its 2nd one: the agent's for-loop, after "2".
        self.double.control({"drop_stream_next": 100, "drop_after_events": 2})
        mark = self.double.mark()
        tid, t = self.run_task(FIVE_LINES)
        reqs = self.double.requests(mark)
        dropped = [r for r in reqs if r.get("rpc") == "process.Process/Start" and r.get("dropped")
                   and r["body"]["process"]["args"][-2:] == ["bash", "-s"]]
        self.assertEqual(len(dropped), 1, "the agent's stream was not dropped")
        tag = dropped[0]["body"]["tag"]
        self.assertTrue([r for r in reqs if r.get("rpc") == "process.Process/Connect"
                         and r["body"]["process"].get("tag") == tag], "the client did not re-attach")
        self.check_full_output(tid, t, range(1, 6))

    def test_stream_gap_while_detached_loses_nothing(self):
        # Lines every 0.2 s: several are printed while the client is detached (it waits before
        # re-attaching, and Connect replays nothing). They must come from the output file, once,
        # in order, and the lines after the re-attach must not be duplicated.
        self.double.control({"drop_stream_next": 100, "drop_after_events": 2})
        tid, t = self.run_task("for i in $(seq 15); do echo $i; sleep 0.2; done\n")
        self.check_full_output(tid, t, range(1, 16))

    def test_stream_error_unavailable_is_reattached(self):
        # envd (or its proxy) ending the stream with `unavailable` while the process keeps running
        # (E2B.md: "real envd may also say unavailable"): the same as a drop.
        self.double.control({"stream_error_next": 100, "stream_error_after_events": 2})
        tid, t = self.run_task(FIVE_LINES)
        self.check_full_output(tid, t, range(1, 6))

    def test_sandbox_expires_mid_run(self):
        self.double.control({"expire_next": 1, "expire_after_s": 2.5})
        t0 = time.time()
        tid, t = self.run_task("echo started\nsleep 30\n")
        self.assertEqual(t["status"], "failed")
        self.assert_clean_error(t, r"(?i)sandbox", r"(?i)e2b")
        self.assertLess(time.time() - t0, 15)
        sid = t["container_id"][4:]
        self.assertEqual(self.double.killed().get(sid), "expired")

    def test_sandbox_killed_through_control_mid_run(self):
        tid = start_task(self.srv, self.tok, "echo started\nsleep 30\n", self.repos.url("octo/demo"))
        seen = threading.Event()
        th, box = follow_events(self.srv, self.tok, tid, on_event=lambda e: e["event"] == "output"
                                and "started" in (e["data"]["data"].get("text") or "") and seen.set())
        self.assertTrue(seen.wait(30), "the agent did not start: %s" % box)
        sb = self.double.for_task(tid)
        self.assertEqual(len(sb), 1)
        self.double.control({"expire": sb[0]["sandboxID"]})
        t = wait_task(self.srv, self.tok, tid, timeout=15)
        self.assertEqual(t["status"], "failed")
        self.assert_clean_error(t, r"(?i)sandbox")

    def test_bad_api_key(self):
        self.double.server.opts["api_key"] = "e2b_" + uuid.uuid4().hex  # the server's key is now wrong
        mark = self.double.mark()
        tid, t = self.run_task()
        self.assertEqual(t["status"], "failed")
        self.assert_clean_error(t, r"(?i)api key", r"E2B")
        self.assertEqual([r["status"] for r in self.creates(mark)], [401])
        self.assertIsNone(t["container_id"])
        for e in events_of(self.srv, self.tok, tid):
            self.assertNotIn(self.double.key, str(e["data"]))

    def test_unknown_template(self):
        self.double.control({"templates": ["base"]})
        _, t = self.run_task()
        self.assertEqual(t["status"], "failed")
        self.assert_clean_error(t, r"(?i)template", "aicode-agents")

    def test_z_e2b_key_never_leaks(self):
        # Last in the class: after every failure path above (bad key, 429, 5xx, expiry, ...).
        self.assert_key_never_leaked(self.srv, self.tok)

    def test_envd_unavailable(self):
        self.double.control({"envd_down": True})
        mark = self.double.mark()
        _, t = self.run_task()
        self.assertEqual(t["status"], "failed")
        self.assert_clean_error(t, r"(?i)e2b", r"(?i)sandbox", r"(?i)unavailable|502")
        # The sandbox was created, then killed: nothing is left behind.
        c = [r for r in self.creates(mark) if r["status"] == 201]
        self.assertEqual(len(c), 1)
        self.assertEqual(self.double.killed().get(c[0]["sandbox_id"]), "killed")


# -- the orphan reaper ---------------------------------------------------------------------------

class E2BReaperTests(E2BTestCase):
    @classmethod
    def setUpClass(cls):
        cls.double = E2BDouble()
        cls.repos = GitRepos(require_token=[GH_TOKEN], public=True)
        cls.repos.make("octo/demo", {"README.md": "hi\n"})
        cls.gh, _, _ = github_api.start(root=cls.repos.root, tokens={GH_TOKEN: "octocat"})
        cls.srv = e2b_task_server(cls.double, cls.repos, env={"E2B_REAP_INTERVAL_S": "1",
                                                               "GITHUB_API_URL": cls.gh.url})
        cls.tok = cls.srv.token(new_user())
        cls.done_tid = start_task(cls.srv, cls.tok, "echo x > x.txt\n", cls.repos.url("octo/demo"))
        cls.done = wait_task(cls.srv, cls.tok, cls.done_tid)

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()
        cls.double.close()
        cls.gh.close()
        cls.repos.close()

    def test_orphans_are_killed_running_task_is_not(self):
        self.assertEqual(self.done["status"], "completed", self.done["error"])
        tid = start_task(self.srv, self.tok, "echo started\nsleep 5\necho finished\n", self.repos.url("octo/demo"))
        running = wait_until(lambda: self.double.for_task(tid), timeout=10)
        self.assertTrue(running)
        run_sid = running[0]["sandboxID"]
        # (E2B_DEPLOYMENT defaults to "aicode": the reaper only looks at its own deployment)
        finished = self.double.create({"app": "aicode", "deployment": "aicode", "task_id": str(self.done_tid),
                                       "user_id": "u"})
        unknown = self.double.create({"app": "aicode", "deployment": "aicode", "task_id": "987654", "user_id": "u"})
        not_ours = self.double.create({"app": "someone-else", "task_id": str(self.done_tid)})
        other_deployment = self.double.create({"app": "aicode", "deployment": "staging", "task_id": "987654"})
        t0 = time.time()
        gone = wait_until(lambda: not ({finished, unknown} & set(self.double.live_ids())), timeout=5)
        self.assertTrue(gone, "orphans still running after 5 s: %s" % self.double.live_ids())
        self.assertLess(time.time() - t0, 4)
        killed = self.double.killed()
        self.assertEqual((killed.get(finished), killed.get(unknown)), ("killed", "killed"))
        live = self.double.live_ids()
        self.assertIn(run_sid, live, "the running task's sandbox was reaped")
        self.assertIn(not_ours, live, "a sandbox not tagged app=aicode was killed")
        self.assertIn(other_deployment, live, "another deployment's sandbox was killed")
        t = wait_task(self.srv, self.tok, tid, timeout=20)
        self.assertEqual(t["status"], "completed", t["error"])
        self.assertIn("finished", assistant_messages(t)[-1])
        self.assertIn("killed orphaned E2B sandboxes", self.srv.log_text())
        self.double.api("DELETE", "/sandboxes/" + not_ours)
        self.double.api("DELETE", "/sandboxes/" + other_deployment)

    # -- every page of the list (GET /v2/sandboxes: 100 a page, X-Next-Token / nextToken) --------

    def hold_reaper(self):
        """Every list request answers 500 until release_reaper(): sandboxes made meanwhile are all
        there at once for the next reaper run."""
        self.double.control({"list_5xx_next": 10 ** 6, "max_sandboxes": 400})
        self.addCleanup(self.double.control, {"list_5xx_next": 0, "list_bad_token_next": 0, "list_endless": False})

    def release_reaper(self):
        mark = self.double.mark()
        self.log_mark = len(self.srv.log_text())
        self.double.control({"list_5xx_next": 0})
        return mark

    def new_log(self):
        """The server log since release_reaper()."""
        return self.srv.log_text()[self.log_mark:]

    def list_runs(self, mark):
        """The reaper's list requests since mark, grouped by run (a run starts with the request without
        nextToken) -> [[(status, nextToken or None, query)]]."""
        runs = []
        for r in self.double.requests(mark):
            if r["method"] == "GET" and r["path"] == "/v2/sandboxes":
                token = (r["query"].get("nextToken") or [None])[0]
                if token is None:
                    runs.append([])
                if runs:
                    runs[-1].append((r.get("status"), token, r["query"]))
        return runs

    def deletes(self, mark):
        out = {}
        for r in self.double.requests(mark):
            if r["method"] == "DELETE" and r["path"].startswith("/sandboxes/"):
                sid = r["path"][len("/sandboxes/"):]
                out[sid] = out.get(sid, 0) + 1
        return out

    def orphans(self, n, start=0):
        return [self.double.create({"app": "aicode", "deployment": "aicode", "user_id": "u",
                                    "task_id": str(self.done_tid) if i % 2 else str(900000 + i)})
                for i in range(start, start + n)]

    def test_reaper_reads_every_page(self):
        # 250 orphans and a running task's sandbox in between: 251 sandboxes of this deployment,
        # three pages (100, 100, 51), newest first. All 250 orphans go in one run; the running
        # task's sandbox, another deployment's and untagged ones stay.
        self.hold_reaper()
        orphans = self.orphans(130)
        tid = start_task(self.srv, self.tok, "echo started\nsleep 12\necho finished\n", self.repos.url("octo/demo"))
        running = wait_until(lambda: self.double.for_task(tid), timeout=10)
        self.assertTrue(running)
        run_sid = running[0]["sandboxID"]
        others = [self.double.create({"app": "aicode", "deployment": "staging", "task_id": str(900000 + i)})
                  for i in range(5)]
        others += [self.double.create({"app": "someone-else", "task_id": "900001"}) for _ in range(3)]
        orphans += self.orphans(120, start=130)
        try:
            self.assertEqual(len(set(self.double.live_ids())), 250 + 1 + 8)
            t0 = time.time()
            mark = self.release_reaper()
            gone = wait_until(lambda: not (set(orphans) & set(self.double.live_ids())), timeout=15)
            left = set(orphans) & set(self.double.live_ids())
            self.assertTrue(gone, "%d of 250 orphans still running after 15 s" % len(left))
            elapsed = time.time() - t0
            killed = self.double.killed()
            self.assertEqual({killed.get(sid) for sid in orphans}, {"killed"})
            live = set(self.double.live_ids())
            self.assertIn(run_sid, live, "the running task's sandbox was reaped")
            self.assertEqual(set(others) - live, set(), "another deployment's or an untagged sandbox was killed")
            # One run read the three pages and killed every orphan once.
            runs = [r for r in self.list_runs(mark) if r and r[0][0] == 200]
            self.assertTrue(runs, self.list_runs(mark))
            first = runs[0]
            self.assertEqual([(st, tok is not None) for st, tok, _ in first], [(200, False), (200, True), (200, True)],
                             first)
            for _, _, q in first:
                self.assertEqual((q["limit"], q["state"]), (["100"], ["running"]))
                self.assertEqual(sorted(q["metadata"][0].split("&")), ["app=aicode", "deployment=aicode"])
            dels = self.deletes(mark)
            self.assertEqual({dels.get(sid) for sid in orphans}, {1}, "every orphan DELETEd exactly once")
            self.assertEqual(set(dels) - set(orphans), set())
            self.assertRegex(self.new_log(), r'killed orphaned E2B sandboxes.*"count":\s*250\b')
            self.assertNotIn("the sandbox list is incomplete", self.new_log())
            print("# reaper: 251 listed in 3 pages, 250 orphans killed in %.2f s" % elapsed)
            t = wait_task(self.srv, self.tok, tid, timeout=30)
            self.assertEqual(t["status"], "completed", t["error"])
            self.assertIn("finished", assistant_messages(t)[-1])
        finally:
            for sid in others:
                self.double.api("DELETE", "/sandboxes/" + sid)

    def test_reaper_broken_next_token(self):
        # Page 1's X-Next-Token does not parse: E2B answers page 2 with 400 "Invalid next token".
        # That run kills page 1's orphans and logs the incomplete list; the next run gets the rest.
        self.hold_reaper()
        orphans = self.orphans(150)
        self.double.control({"list_bad_token_next": 1})
        mark = self.release_reaper()
        gone = wait_until(lambda: not (set(orphans) & set(self.double.live_ids())), timeout=15)
        self.assertTrue(gone, "%d of 150 orphans still running" % len(set(orphans) & set(self.double.live_ids())))
        runs = self.list_runs(mark)
        ok_runs = [r for r in runs if r and r[0][0] == 200]
        self.assertEqual([(st, tok) for st, tok, _ in ok_runs[0]], [(200, None), (400, "not-a-cursor!")])
        self.assertEqual([st for st, _, _ in ok_runs[1]], [200])  # the 50 left: one page
        self.assertEqual(self.deletes(mark), {sid: 1 for sid in orphans})
        self.assertRegex(self.new_log(), r"the sandbox list is incomplete.*Invalid next token")

    def test_reaper_page_bound(self):
        # A next token that never ends (a new one on every page, starting over): each run stops
        # after 50 pages and says so; the orphans it saw (on every page) are killed once.
        self.hold_reaper()
        orphans = self.orphans(3)
        self.double.control({"list_endless": True})
        mark = self.release_reaper()
        gone = wait_until(lambda: not (set(orphans) & set(self.double.live_ids())), timeout=10)
        self.assertTrue(gone)
        self.assertTrue(wait_until(lambda: len([r for r in self.list_runs(mark) if len(r) == 50]) >= 2, timeout=10),
                        [len(r) for r in self.list_runs(mark)])
        self.double.control({"list_endless": False})
        runs = self.list_runs(mark)
        self.assertEqual(max(len(r) for r in runs), 50, [len(r) for r in runs])
        self.assertEqual({st for r in runs for st, _, _ in r} - {None}, {200})
        self.assertEqual(self.deletes(mark), {sid: 1 for sid in orphans})
        self.assertRegex(self.new_log(), r"the sandbox list is incomplete.*stopped after 50 pages")

    def test_z_e2b_key_never_leaks(self):
        self.assert_key_never_leaked(self.srv, self.tok, (GH_TOKEN,))

    def test_create_pr_is_not_reaped(self):
        # create-pr's sandbox carries the (completed) task's id: the reaper must not kill it
        # while it clones and pushes (git_http made slow so that this spans reaper rounds).
        self.repos.server.opts["delay_ms"] = 600
        mark = self.double.mark()
        try:
            r = self.srv.request("POST", "/api/create-pr/%d" % self.done_tid, token=self.tok,
                                 body={"github_token": GH_TOKEN}, timeout=60)
        finally:
            self.repos.server.opts["delay_ms"] = 0
        reqs = self.double.requests(mark)
        created = [x["sandbox_id"] for x in reqs if x["method"] == "POST" and x["path"] == "/sandboxes"]
        self.assertEqual(len(created), 1)
        deletes = [x for x in reqs if x["method"] == "DELETE" and x["path"] == "/sandboxes/" + created[0]]
        first_delete = deletes[0]["seq"] if deletes else None
        used_after = [x.get("rpc") or x["path"] for x in reqs if x.get("sandbox_id") == created[0]
                      and x["plane"] == "envd" and first_delete and x["seq"] > first_delete]
        self.assertEqual(r.status, 200, "%r; the sandbox was DELETEd (by the reaper: %r) while create-pr still "
                         "used it: %s" % (r, "killed orphaned E2B sandboxes" in self.srv.log_text(), used_after))
        self.assertIn("aicode/%d" % self.done_tid, self.repos.branches("octo/demo"))


if __name__ == "__main__":
    unittest.main()
