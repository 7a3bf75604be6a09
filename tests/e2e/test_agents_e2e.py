"""E2E (issue #3): the real agent CLIs, the whole way through the HTTP API.

For each of claude (Claude Code) and codex (Codex CLI), installed by `make agents` in
tools/agents/node_modules, against its fake model API (tests/fakes/anthropic_api.py,
tests/fakes/openai_api.py), with real git over smart HTTP (tests/fakes/git_http.py, a
required token) and the fake GitHub REST API (tests/fakes/github_api.py):

- start-task with a prompt of directive lines (the fakes turn them into tool calls the
  CLI really executes in the sandbox): create a file, edit one, delete one, add a
  binary file, reply;
- the live SSE stream has agent / assistant / tool_call / tool_result / result events
  and ends; the task completes with exactly the expected changed_files, git_diff and
  git_patch (checked against a diff computed here with git), the scripted reply as the
  assistant message, usage (and cost_usd for claude) in execution_metadata;
- create-pr pushes a branch whose tree and diff are exactly the task's change (bytes of
  the binary file, the deletion);
- the real API keys (canaries) never reach the sandbox (`bash: env > env.txt`), while the
  fake model API received every request with the real key (the model proxy swapped it);
- a follow-up chat run builds on the previous changes;
- an agent crash (`fake-error: 400`) fails the task with a readable error;
- cancelling a running agent stops it and every process it started;
- a hung model (`fake-hang`) with TASK_TIMEOUT=5 fails the task with the timeout error,
  with no process (and no model connection) left behind.

Each CLI run takes about 1 s; servers and fakes are shared per class.
"""
import datetime
import json
import os
import shutil
import tempfile
import threading
import time
import unittest
import uuid

from fakes.tasks_kit import (GitRepos, SHA1, assistant_messages, git_http, github_api, read_sse, sandbox_dirs,
                             task_row, task_server, wait_for, wait_task)
from harness import new_user

import anthropic_api  # noqa: E402  (tests/fakes, on sys.path through tasks_kit)
import openai_api  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
AGENTS_BIN = os.path.join(ROOT, "tools", "agents", "node_modules", ".bin")

GH_TOKEN = "ghs_agents_e2e_" + uuid.uuid4().hex[:16]
BIN_BYTES = b"\x00\x01\x02\xfe\xff binary\x00\n"

BASE_FILES = {
    "README.md": "# Demo\n\nhello from the base\n",
    "gone.txt": "this file is deleted by the agent\n",
    "keep.txt": "unchanged\n",
    "src/app.py": "print('v1')\n",
}


def agent_prompt(agent):
    # The first line is not a directive: the fakes ignore it, as a model would follow it.
    return "\n".join([
        "Please make the following changes to the repository.",
        "write docs/created.txt: created by %s" % agent,
        "edit README.md: hello from the base => hello from %s" % agent,
        "bash: rm gone.txt",
        r"bash: mkdir -p assets && printf '\000\001\002\376\377 binary\000\n' > assets/data.bin",
        "reply: Finished the %s changes." % agent,
    ])


def expected_files(agent):
    """The repository after the agent's changes: path -> bytes (gone.txt removed)."""
    files = {k: v.encode() for k, v in BASE_FILES.items() if k != "gone.txt"}
    files["README.md"] = ("# Demo\n\nhello from %s\n" % agent).encode()
    files["docs/created.txt"] = ("created by %s\n" % agent).encode()
    files["assets/data.bin"] = BIN_BYTES
    return files


EXPECTED_CHANGED = ["README.md", "assets/data.bin", "docs/created.txt", "gone.txt"]


# -- host processes and sockets --------------------------------------------------------------------

def _proc_table():
    """{pid: (ppid, state)} of every process on the host."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2:].split()
        out[int(d)] = (int(rest[1]), rest[0])
    return out


def descendants(pid):
    """Live (non-zombie) descendants of pid: {pid: cmdline}."""
    table = _proc_table()
    children = {}
    for p, (ppid, state) in table.items():
        children.setdefault(ppid, []).append(p)
    out, stack = {}, [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            stack.append(c)
            if table[c][1] != "Z":
                out[c] = cmdline(c)
    return out


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", errors="replace").strip()
    except OSError:
        return ""


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def established_to(pid, ports):
    """TCP connections of process `pid` (its sockets) to 127.0.0.1:<port in ports>, ESTABLISHED."""
    inodes = set()
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return []
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            remote_port = int(parts[2].rsplit(":", 1)[1], 16)
            if parts[3] == "01" and parts[9] in inodes and remote_port in ports:
                found.append((parts[1], parts[2]))
    return found


# -- fakes and server --------------------------------------------------------------------------------

class Stack:
    """git_http (private repos: every clone and push needs GH_TOKEN), github_api, both model fakes
    (each accepts only its canary key and logs every request to a file), and bin/aicode with the
    canaries as ANTHROPIC_API_KEY / OPENAI_API_KEY and the fakes as the model endpoints."""

    def __init__(self, env=None):
        self.tmp = tempfile.mkdtemp(prefix="aicode-agents-e2e-")
        self.anthropic_key = "sk-ant-CANARY" + uuid.uuid4().hex
        self.openai_key = "sk-oa-CANARY" + uuid.uuid4().hex
        self.repos = GitRepos(require_token=[GH_TOKEN])
        self.gh, _, _ = github_api.start(root=self.repos.root, tokens={GH_TOKEN: "octocat"})
        self.anthropic_log = os.path.join(self.tmp, "anthropic.jsonl")
        self.openai_log = os.path.join(self.tmp, "openai.jsonl")
        self.anthropic, _, _ = anthropic_api.start(api_keys=[self.anthropic_key], log=self.anthropic_log)
        self.openai, _, _ = openai_api.start(api_keys=[self.openai_key], log=self.openai_log)
        e = {
            "ANTHROPIC_API_KEY": self.anthropic_key, "ANTHROPIC_BASE_URL": self.anthropic.url,
            "OPENAI_API_KEY": self.openai_key, "OPENAI_BASE_URL": self.openai.url + "/v1",
            "GITHUB_API_URL": self.gh.url, "MAX_CONCURRENT_TASKS": "4", "MAX_TASKS_PER_USER": "8",
        }
        e.update(env or {})
        try:
            self.srv = task_server(self.repos, env=e)
        except Exception:
            self.close()
            raise
        self.user = new_user()
        self.tok = self.srv.token(self.user)

    def model(self, agent):
        return self.anthropic if agent == "claude" else self.openai

    def model_log(self, agent):
        path = self.anthropic_log if agent == "claude" else self.openai_log
        if not os.path.exists(path):  # created on the first request
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def start(self, agent, prompt, repo, expect=200):
        r = self.srv.request("POST", "/api/start-task", token=self.tok, body={
            "prompt": prompt, "repo_url": self.repos.url(repo), "model": agent, "github_token": GH_TOKEN})
        if r.status != expect:
            raise AssertionError("start-task answered %d: %s" % (r.status, r.body))
        return r.json["task_id"]

    def wait(self, tid, timeout=60, **kw):
        return wait_task(self.srv, self.tok, tid, timeout=timeout, **kw)

    def events(self, tid, timeout=60):
        return read_sse(self.srv, "/api/tasks/%d/events" % tid, token=self.tok, timeout=timeout)

    def close(self):
        for what in ("srv", "anthropic", "openai", "gh", "repos"):
            obj = getattr(self, what, None)
            if obj is not None:
                try:
                    obj.close()
                except Exception:
                    pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def live_events(stack, tid):
    """Reads the task's SSE stream in a thread from now on; join() then .result."""
    box = {}

    def run():
        try:
            box["result"] = stack.events(tid, timeout=120)
        except Exception as e:  # reported by the test that reads it
            box["error"] = e
    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, box


def expected_diff_and_tree(repos, name, files, base):
    """What the change should be, computed here with git: (git diff base, tree sha)."""
    work = tempfile.mkdtemp(prefix="aicode-expected-")
    try:
        git_http._git(["clone", "-q", repos.path(name), work])
        git_http._git(["checkout", "-q", base], cwd=work)
        for path in git_http._git(["ls-files"], cwd=work).stdout.decode().split():
            os.unlink(os.path.join(work, path))
        for path, content in files.items():
            full = os.path.join(work, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(content)
        git_http._git(["add", "-A"], cwd=work)
        diff = git_http._git(["diff", "--cached", base], cwd=work).stdout.decode()
        tree = git_http._git(["write-tree"], cwd=work).stdout.decode().strip()
        return diff, tree
    finally:
        shutil.rmtree(work, ignore_errors=True)


def apply_patch_tree(repos, name, base, patch):
    """Applies a format-patch with `git am` on a fresh clone at base; returns the tree sha."""
    work = tempfile.mkdtemp(prefix="aicode-am-")
    try:
        git_http._git(["clone", "-q", repos.path(name), work])
        git_http._git(["checkout", "-q", base], cwd=work)
        env = dict(os.environ, GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
        git_http._git(["am", "-q"], cwd=work, env=env, input=patch.encode())
        return git_http._git(["rev-parse", "HEAD^{tree}"], cwd=work).stdout.decode().strip()
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- the full path, once per agent -------------------------------------------------------------------

class AgentFlow:
    """Mixed into one TestCase per agent (AGENT = "claude" | "codex")."""
    AGENT = None
    CLI = None

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(os.path.join(AGENTS_BIN, cls.CLI)):
            raise unittest.SkipTest("tools/agents is not installed (make agents)")
        cls.stack = s = Stack()
        try:
            cls.prepare(s)
        except BaseException:
            s.close()
            raise

    @classmethod
    def prepare(cls, s):
        cls.repo = "octo/%s-demo" % cls.AGENT
        s.repos.make(cls.repo, dict(BASE_FILES))
        s.repos.make("octo/%s-misc" % cls.AGENT, {"README.md": "misc\n"})
        cls.base = s.repos.branches(cls.repo)["main"]
        # The main task (its events read live) and the secrets task run side by side.
        cls.tid = s.start(cls.AGENT, agent_prompt(cls.AGENT), cls.repo)
        cls.sse_thread, cls.sse_box = live_events(s, cls.tid)
        cls.env_tid = s.start(cls.AGENT, "bash: env > env.txt\nreply: environment saved", "octo/%s-misc" % cls.AGENT)
        cls.task = s.wait(cls.tid)
        cls.env_task = s.wait(cls.env_tid)
        cls.sse_thread.join(60)
        cls.main_before_pr = s.repos.branches(cls.repo)["main"]
        cls.pr = s.srv.request("POST", "/api/create-pr/%d" % cls.tid, token=s.tok,
                               body={"github_token": GH_TOKEN, "title": "Agent change (%s)" % cls.AGENT})

    @classmethod
    def tearDownClass(cls):
        cls.stack.close()

    # -- the task ------------------------------------------------------------------------------------
    def test_task_completed_with_the_expected_files(self):
        t = self.task
        self.assertEqual(t["status"], "completed", t["error"])
        self.assertEqual(t["agent"], self.AGENT)
        self.assertIsNone(t["error"])
        self.assertEqual(t["changed_files"], EXPECTED_CHANGED)
        self.assertRegex(t["commit_hash"], SHA1)
        self.assertEqual(t["execution_metadata"]["base_commit"], self.base)
        fc = {f["filename"]: f for f in t["execution_metadata"]["file_changes"]}
        self.assertEqual(sorted(fc), EXPECTED_CHANGED)
        self.assertEqual(fc["docs/created.txt"]["before"], "FILE_NOT_EXISTS")
        self.assertEqual(fc["docs/created.txt"]["after"], "created by %s\n" % self.AGENT)
        self.assertEqual(fc["README.md"]["before"], BASE_FILES["README.md"])
        self.assertEqual(fc["README.md"]["after"], "# Demo\n\nhello from %s\n" % self.AGENT)
        self.assertEqual(fc["gone.txt"]["before"], BASE_FILES["gone.txt"])
        self.assertEqual(fc["gone.txt"]["after"], "FILE_DELETED")
        self.assertEqual(fc["assets/data.bin"]["after"], "(binary file)")

    def test_git_diff_is_exactly_the_change(self):
        diff, _ = expected_diff_and_tree(self.stack.repos, self.repo, expected_files(self.AGENT), self.base)
        self.assertEqual(self.task["git_diff"], diff)
        self.assertIn("deleted file mode 100644", diff)
        self.assertIn("Binary files /dev/null and b/assets/data.bin differ", diff)
        r = self.stack.srv.request("GET", "/api/git-diff/%d" % self.tid, token=self.stack.tok)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["git_diff"], diff)

    def test_git_patch_applies_to_exactly_the_expected_tree(self):
        patch = self.task["git_patch"]
        self.assertRegex(patch, r"^From [0-9a-f]{40} ")
        self.assertIn("GIT binary patch", patch)
        _, tree = expected_diff_and_tree(self.stack.repos, self.repo, expected_files(self.AGENT), self.base)
        self.assertEqual(apply_patch_tree(self.stack.repos, self.repo, self.base, patch), tree)

    def test_assistant_message_is_the_scripted_reply(self):
        self.assertEqual(assistant_messages(self.task), ["Finished the %s changes." % self.AGENT])
        roles = [m["role"] for m in self.task["chat_messages"]]
        self.assertEqual(roles, ["user", "assistant"])
        self.assertEqual(self.task["chat_messages"][0]["content"], agent_prompt(self.AGENT))

    def test_execution_metadata_has_usage(self):
        meta = self.task["execution_metadata"]
        usage = meta.get("usage")
        self.assertIsInstance(usage, dict, meta)
        self.assertGreater(usage.get("input_tokens", 0), 0, usage)
        self.assertGreater(usage.get("output_tokens", 0), 0, usage)
        if self.AGENT == "claude":
            self.assertIsInstance(meta.get("cost_usd"), (int, float), meta)
            self.assertGreater(meta["cost_usd"], 0)
        self.assertEqual(meta.get("runs"), 1)

    # -- the event stream ----------------------------------------------------------------------------
    def test_live_events(self):
        self.assertFalse(self.sse_thread.is_alive(), "the event stream did not end")
        self.assertNotIn("error", self.sse_box, self.sse_box.get("error"))
        status, headers, events, raw = self.sse_box["result"]
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/event-stream"), headers)
        types = [e["event"] for e in events]
        for kind in ("status", "step", "agent", "assistant", "tool_call", "tool_result", "result"):
            self.assertIn(kind, types, kind)
        self.assertEqual(types[-1], "end")
        self.assertEqual(events[-1]["data"], {"status": "completed"})
        body = [e for e in events if e["event"] != "end"]
        ids = [int(e["id"]) for e in body]
        self.assertEqual(ids, sorted(set(ids)), "event ids increase")
        statuses = [e["data"]["data"]["status"] for e in body if e["event"] == "status"]
        self.assertEqual(statuses[-1], "completed")
        self.assertIn("running", statuses)
        data = {k: [e["data"]["data"] for e in body if e["event"] == k] for k in set(types)}
        self.assertEqual(data["agent"][0]["agent"], self.AGENT)
        self.assertIn("Finished the %s changes." % self.AGENT, [a["text"] for a in data["assistant"]])
        calls, results = data["tool_call"], data["tool_result"]
        if self.AGENT == "claude":
            self.assertEqual([c["name"] for c in calls], ["Write", "Read", "Edit", "Bash", "Bash"])
            self.assertIn("docs/created.txt", calls[0]["input"])
            self.assertIn("rm gone.txt", calls[3]["input"])
        else:
            self.assertEqual([c["name"] for c in calls], ["exec_command"] * 4)
            self.assertIn("created.txt", calls[0]["input"])
            self.assertIn("rm gone.txt", calls[2]["input"])
        self.assertEqual([r["id"] for r in results], [c["id"] for c in calls])
        self.assertEqual([r["is_error"] for r in results], [False] * len(results), results)
        result = data["result"][-1]
        self.assertEqual(result["changed_files"], EXPECTED_CHANGED)
        self.assertEqual(result["commit_hash"], self.task["commit_hash"])
        self.assertEqual(result["answer"], "Finished the %s changes." % self.AGENT)
        # Order: the agent starts, calls tools, answers; then the result, then completed.
        pos = {k: types.index(k) for k in ("agent", "tool_call", "assistant", "result")}
        self.assertLess(pos["agent"], pos["tool_call"])
        self.assertLess(pos["tool_call"], pos["result"])
        self.assertLess(pos["assistant"], pos["result"])
        # A late client replays the same stored history.
        _, _, again, _ = self.stack.events(self.tid)
        self.assertEqual([(e["id"], e["event"]) for e in again], [(e["id"], e["event"]) for e in events])

    # -- the pull request ----------------------------------------------------------------------------
    def test_create_pr(self):
        r = self.pr
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "success")
        self.assertEqual(r.json["branch"], "aicode/%d" % self.tid)
        self.assertEqual(r.json["files_updated"], len(EXPECTED_CHANGED))
        pulls = [p for p in self.stack.gh.pulls.get(self.repo, []) if p["number"] == r.json["pr_number"]]
        self.assertEqual(len(pulls), 1)
        self.assertEqual(pulls[0]["head"]["ref"], "aicode/%d" % self.tid)
        self.assertEqual(pulls[0]["base"]["ref"], "main")
        self.assertEqual(pulls[0]["title"], "Agent change (%s)" % self.AGENT)
        self.assertEqual(pulls[0]["html_url"], r.json["pr_url"])
        t = task_row(self.stack.srv, self.stack.tok, self.tid)
        self.assertEqual((t["pr_url"], t["pr_number"]), (r.json["pr_url"], r.json["pr_number"]))
        pushes = [x for x in self.stack.repos.requests() if x.get("service") == "receive-pack"
                  and x.get("status") == 200]
        self.assertTrue(pushes, "nothing was pushed")

    def test_pushed_branch_holds_exactly_the_change(self):
        self.assertEqual(self.pr.status, 200, self.pr)
        repos, branch = self.stack.repos, "aicode/%d" % self.tid
        branches = repos.branches(self.repo)
        self.assertIn(branch, branches)
        self.assertEqual(branches["main"], self.main_before_pr, "main untouched")
        self.assertEqual(branches["main"], self.base)
        # The diff between the base and the pushed branch is the task's diff.
        self.assertEqual(repos.git(self.repo, "diff", self.base, branch), self.task["git_diff"])
        # One commit on top of the base, whose tree is exactly the expected one.
        parents = repos.git(self.repo, "rev-list", "--parents", "-n", "1", branch).split()
        self.assertEqual(parents[1:], [self.base])
        _, tree = expected_diff_and_tree(repos, self.repo, expected_files(self.AGENT), self.base)
        self.assertEqual(repos.git(self.repo, "rev-parse", branch + "^{tree}").strip(), tree)
        # Every file byte-identical, the deleted one gone.
        files = git_http.tree(repos.root, self.repo, branch)
        self.assertEqual(sorted(files), sorted(expected_files(self.AGENT)))
        self.assertNotIn("gone.txt", files)
        for path, content in expected_files(self.AGENT).items():
            self.assertEqual(git_http.read_file(repos.root, self.repo, branch, path), content, path)
            self.assertEqual(files[path][0], "100644", path)

    # -- secrets ---------------------------------------------------------------------------------------
    def test_real_api_key_never_reaches_the_sandbox(self):
        t = self.env_task
        self.assertEqual(t["status"], "completed", t["error"])
        self.assertEqual(t["changed_files"], ["env.txt"])
        env_txt = t["execution_metadata"]["file_changes"][0]["after"]
        self.assertIn("HOME=/home/agent", env_txt, "env.txt holds the agent's environment")
        for key in (self.stack.anthropic_key, self.stack.openai_key):
            self.assertNotIn(key, env_txt)
            self.assertNotIn(key[6:], env_txt)
        for text in (json.dumps(t), json.dumps(self.task), self.stack.srv.log_text(),
                     self.stack.events(self.env_tid)[3]):
            for key in (self.stack.anthropic_key, self.stack.openai_key):
                self.assertNotIn(key, text)
        env = dict(line.split("=", 1) for line in env_txt.splitlines() if "=" in line)
        name = "ANTHROPIC_API_KEY" if self.AGENT == "claude" else "OPENAI_API_KEY"
        # What the agent holds instead: a per-run token for aicode's model proxy, useless afterwards.
        self.assertRegex(env.get(name, ""), r"^[0-9a-f]{64}$", env)
        self.assertNotIn("OPENAI_API_KEY" if self.AGENT == "claude" else "ANTHROPIC_API_KEY", env)
        if self.AGENT == "claude":
            self.assertRegex(env.get("ANTHROPIC_BASE_URL", ""), r"/internal/model/anthropic$")
            r = self.stack.srv.request("POST", "/internal/model/anthropic/v1/messages",
                                       headers={"x-api-key": env[name]}, body={"model": "x", "messages": []})
        else:
            r = self.stack.srv.request("POST", "/internal/model/openai/v1/responses",
                                       headers={"Authorization": "Bearer " + env[name]}, body={"model": "x"})
        self.assertEqual(r.status, 401, "the run's model token still works after the run: %r" % r)

    def test_model_api_received_the_real_key(self):
        log = self.stack.model_log(self.AGENT)
        path = "/v1/messages" if self.AGENT == "claude" else "/v1/responses"
        calls = [r for r in log if r["path"] == path]
        # At least the main task's 5 (claude) / 4 (codex) tool turns plus the final answer.
        self.assertGreaterEqual(len(calls), 5)
        for r in calls:
            if self.AGENT == "claude":
                self.assertEqual(r["headers"].get("x-api-key"), self.stack.anthropic_key)
            else:
                self.assertEqual(r["headers"].get("authorization"), "Bearer " + self.stack.openai_key)
        statuses = [r.get("status") for r in self.stack.model(self.AGENT).requests if r["path"] == path]
        self.assertNotIn(401, statuses)
        # The other provider was not asked anything by this agent's tasks.
        other = "codex" if self.AGENT == "claude" else "claude"
        self.assertEqual([r for r in self.stack.model_log(other)
                          if r["path"] in ("/v1/messages", "/v1/responses")], [])

    # -- follow-up chat ----------------------------------------------------------------------------------
    def test_followup_chat_builds_on_the_previous_changes(self):
        s = self.stack
        name = "octo/%s-chat" % self.AGENT
        s.repos.make(name, {"README.md": "chat\n"})
        tid = s.start(self.AGENT, "write notes.txt: first version\nreply: first run done", name)
        first = s.wait(tid)
        self.assertEqual(first["status"], "completed", first["error"])
        self.assertEqual(first["changed_files"], ["notes.txt"])
        r = s.srv.request("POST", "/api/tasks/%d/chat" % tid, token=s.tok, body={
            "content": "edit notes.txt: first version => second version\nwrite more.txt: more\n"
                       "reply: second run done",
            "github_token": GH_TOKEN})
        self.assertEqual(r.status, 200, r)
        def followup_done():
            t = task_row(s.srv, s.tok, tid)
            if t["status"] in ("failed", "cancelled"):
                return t
            return t if t["status"] == "completed" and len(t["chat_messages"]) >= 4 else None
        second = wait_for(followup_done, timeout=60, what="the follow-up run")
        self.assertEqual(second["status"], "completed", second["error"])
        self.assertEqual([m["role"] for m in second["chat_messages"]], ["user", "assistant", "user", "assistant"])
        self.assertEqual(assistant_messages(second), ["first run done", "second run done"])
        # The edit only succeeds on top of the first run's notes.txt.
        self.assertEqual(second["changed_files"], ["more.txt", "notes.txt"])
        fc = {f["filename"]: f for f in second["execution_metadata"]["file_changes"]}
        self.assertEqual(fc["notes.txt"]["after"], "second version\n")
        self.assertEqual(fc["notes.txt"]["before"], "FILE_NOT_EXISTS")
        self.assertEqual(fc["more.txt"]["after"], "more\n")
        self.assertEqual(second["execution_metadata"]["runs"], 2)
        self.assertNotEqual(second["commit_hash"], first["commit_hash"])
        self.assertIn("+second version", second["git_diff"])
        self.assertNotIn("first version", second["git_diff"])
        _, _, events, _ = s.events(tid)
        results = [e["data"]["data"] for e in events if e["event"] == "tool_result"]
        self.assertTrue(results)
        self.assertEqual([x["is_error"] for x in results], [False] * len(results), results)
        # The second run's patch covers both runs: it applies on the base to the final tree.
        base = s.repos.branches(name)["main"]
        files = {"README.md": b"chat\n", "notes.txt": b"second version\n", "more.txt": b"more\n"}
        _, tree = expected_diff_and_tree(s.repos, name, files, base)
        self.assertEqual(apply_patch_tree(s.repos, name, base, second["git_patch"]), tree)

    # -- failure paths -------------------------------------------------------------------------------------
    def _crash(self):
        if not hasattr(type(self), "_crash_task"):
            s = self.stack
            t0 = time.time()
            tid = s.start(self.AGENT, "write crash.txt: never\nfake-error: 400", "octo/%s-misc" % self.AGENT)
            task = s.wait(tid, timeout=60)
            type(self)._crash_task = (task, time.time() - t0)
        return type(self)._crash_task

    def test_agent_crash_fails_with_a_readable_error(self):
        task, elapsed = self._crash()
        self.assertEqual(task["status"], "failed")
        self.assertLess(elapsed, 30, "a 400 makes both CLIs give up at once")
        err = task["error"]
        self.assertIsInstance(err, str)
        self.assertRegex(err, r"400|[Ii]nvalid request")
        self.assertIn("Claude Code" if self.AGENT == "claude" else "Codex", err)
        self.assertLess(len(err), 600)
        for bad in ("Traceback", "stack traceback", ".lua:", self.stack.anthropic_key, self.stack.openai_key):
            self.assertNotIn(bad, err)
        self.assertEqual(assistant_messages(task), [])
        self.assertIsNone(task["commit_hash"])
        self.assertIsNotNone(task["completed_at"])
        wait_for(lambda: not sandbox_dirs(self.stack.srv), timeout=10, what="the sandbox to be removed")

    def test_agent_crash_error_does_not_claim_success(self):
        # Claude Code reports an API failure as subtype "success" with is_error: true
        # (tests/fakes/README.md); the task's error must not repeat that "success".
        task, _ = self._crash()
        self.assertEqual(task["status"], "failed")
        self.assertNotRegex(task["error"], r"(?i)\bsuccess\b")

    def test_cancel_a_running_agent(self):
        s = self.stack
        secs = "7%d.%04d" % (time.time() % 100, os.getpid() % 10000)
        tid = s.start(self.AGENT, "bash: sleep %s\nreply: should not get here" % secs, "octo/%s-misc" % self.AGENT)
        server = s.srv.proc.pid

        def sleeping():
            return [p for p, cmd in descendants(server).items() if cmd == "sleep " + secs]
        pids = wait_for(sleeping, timeout=60, what="the agent to run `sleep %s`" % secs)
        tree = descendants(server)
        self.assertTrue(any(self.CLI in cmd for cmd in tree.values()), tree)
        self.assertEqual(task_row(s.srv, s.tok, tid)["status"], "running")
        r = s.srv.request("POST", "/api/tasks/%d/cancel" % tid, token=s.tok, body={})
        self.assertEqual(r.status, 200, r)
        t = s.wait(tid, timeout=20)
        self.assertEqual(t["status"], "cancelled", t["error"])
        self.assertIsNone(t["commit_hash"])
        self.assertEqual(assistant_messages(t), [])
        wait_for(lambda: not any(alive(p) for p in list(tree) + pids), timeout=10,
                 what="the agent's processes to end: %r" % tree)
        wait_for(lambda: descendants(server) == {}, timeout=10, what="no process left under the server")
        wait_for(lambda: not sandbox_dirs(s.srv), timeout=10, what="the sandbox to be removed")
        _, _, events, _ = s.events(tid)
        self.assertEqual(events[-1]["data"], {"status": "cancelled"})
        r = s.srv.request("POST", "/api/tasks/%d/cancel" % tid, token=s.tok, body={})
        self.assertEqual(r.status, 409, r)


    def test_server_still_running(self):
        # Runs late (alphabetical order): the host survived every run of this class.
        proc = self.stack.srv.proc
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-2000:]
            log = "\n".join(self.stack.srv.log_text().splitlines()[-20:])
            self.fail("bin/aicode exited with %s\nstderr: %s\nlog tail:\n%s" % (proc.returncode, err, log))


class ClaudeAgentTests(AgentFlow, unittest.TestCase):
    AGENT = "claude"
    CLI = "claude"


class CodexAgentTests(AgentFlow, unittest.TestCase):
    AGENT = "codex"
    CLI = "codex"


# -- a hung model and TASK_TIMEOUT ---------------------------------------------------------------------

class HungModelTimeoutTests(unittest.TestCase):
    """`fake-hang`: the model's stream never ends and neither CLI gives up by itself. With
    TASK_TIMEOUT=5 the engine must fail both tasks and kill everything they started."""

    @classmethod
    def setUpClass(cls):
        for cli in ("claude", "codex"):
            if not os.path.exists(os.path.join(AGENTS_BIN, cli)):
                raise unittest.SkipTest("tools/agents is not installed (make agents)")
        # A short drain: a proxied model request still in flight would hold SIGTERM for 20 s.
        cls.stack = s = Stack(env={"TASK_TIMEOUT": "5", "DRAIN_TIMEOUT_MS": "3000"})
        try:
            cls.prepare(s)
        except BaseException:
            s.close()
            raise

    @classmethod
    def prepare(cls, s):
        s.repos.make("octo/hang", {"README.md": "hang\n"})
        server = s.srv.proc.pid
        t0 = time.time()
        cls.ids = {a: s.start(a, "write never.txt: never\nfake-hang", "octo/hang") for a in ("claude", "codex")}
        cls.seen = {}
        cls.tasks = {}
        while len(cls.tasks) < 2 and time.time() - t0 < 60:
            cls.seen.update(descendants(server))
            for agent, tid in cls.ids.items():
                if agent not in cls.tasks:
                    t = task_row(s.srv, s.tok, tid)
                    if t["status"] in ("completed", "failed", "cancelled"):
                        cls.tasks[agent] = t
                        cls.ended_at = time.time()
            time.sleep(0.1)
        cls.elapsed = time.time() - t0
        if not hasattr(cls, "ended_at"):
            cls.ended_at = time.time()

    @classmethod
    def tearDownClass(cls):
        cls.stack.close()

    def test_both_fail_with_the_timeout_error(self):
        self.assertEqual(sorted(self.tasks), ["claude", "codex"], "not finished after %.0fs" % self.elapsed)
        for agent, t in self.tasks.items():
            with self.subTest(agent=agent):
                self.assertEqual(t["status"], "failed")
                # "Task timed out after 5 seconds" when the engine's watchdog notices first, else the
                # agent step's own timeout ("run agent: Claude Code timed out"): both say it.
                self.assertRegex(t["error"], r"^(Task timed out after 5 seconds|run agent: (Claude Code|Codex) "
                                             r"timed out)$")
                started = datetime.datetime.fromisoformat(t["started_at"].replace("Z", "+00:00"))
                ended = datetime.datetime.fromisoformat(t["completed_at"].replace("Z", "+00:00"))
                self.assertGreaterEqual((ended - started).total_seconds(), 4.5)
                self.assertLess((ended - started).total_seconds(), 10)
                self.assertIsNone(t["commit_hash"])
                self.assertEqual(assistant_messages(t), [])
                _, _, events, _ = self.stack.events(self.ids[agent])
                self.assertEqual(events[-1]["data"], {"status": "failed"})
                self.assertIn("agent", [e["event"] for e in events], "the CLI had started")
        self.assertLess(self.elapsed, 20)

    def test_the_model_was_really_hanging(self):
        for agent, path, header, value in (
                ("claude", "/v1/messages", "x-api-key", self.stack.anthropic_key),
                ("codex", "/v1/responses", "authorization", "Bearer " + self.stack.openai_key)):
            reqs = [r for r in self.stack.model(agent).requests if r["path"] == path]
            self.assertTrue(reqs, agent)
            self.assertEqual(reqs[-1]["headers"].get(header), value)

    def test_no_process_left(self):
        cmds = " | ".join(self.seen.values())
        self.assertIn("bwrap", cmds)
        self.assertIn("claude", cmds, "the claude CLI was seen running")
        self.assertIn("codex", cmds, "the codex CLI was seen running")
        left = wait_for(lambda: not [p for p in self.seen if alive(p)] and "ok", timeout=5,
                        what="every process of the runs to end: %r" % {p: c for p, c in self.seen.items() if alive(p)})
        self.assertEqual(left, "ok")
        wait_for(lambda: descendants(self.stack.srv.proc.pid) == {}, timeout=5,
                 what="no process left under the server")
        wait_for(lambda: not sandbox_dirs(self.stack.srv), timeout=10, what="the sandboxes to be removed")

    def test_no_model_connection_left_open(self):
        # The agent is gone, so nobody will read the hung answer: aicode's model proxy must not
        # keep its upstream request to the model API open (up to MODEL_PROXY_TIMEOUT_MS, 10 min).
        ports = {self.stack.anthropic.server_address[1], self.stack.openai.server_address[1]}
        pid = self.stack.srv.proc.pid
        deadline = max(self.ended_at + 5, time.time() + 1)
        while time.time() < deadline and established_to(pid, ports):
            time.sleep(0.2)
        self.assertEqual(established_to(pid, ports), [],
                         "aicode still holds connections to the model API after the runs timed out")


# -- the host under many concurrent runs ----------------------------------------------------------------

class HostSurvivesConcurrentRunsTests(unittest.TestCase):
    """Regression test, found while benchmarking (bench/tasks.py): with MAX_CONCURRENT_TASKS=8 a
    burst of short tasks crashed bin/aicode within a second (SIGSEGV, or "double free or
    corruption"). In host/src/l_process.c, on_pidfd_readable called proc_maybe_free(p) after
    wake_waiter(p) had resumed Lua, whose GC could already have freed p through l_gc (fixed by
    the `busy` guard). Agent runs use the same code path; the `shell` agent keeps this quick."""

    def test_burst_of_tasks_with_eight_concurrent_runs(self):
        repos = GitRepos()
        srv = None
        try:
            repos.make("octo/burst", {"README.md": "burst\n"})
            srv = task_server(repos, env={"MAX_CONCURRENT_TASKS": "8", "RATE_LIMIT_PER_MINUTE": "0",
                                          "RATE_LIMIT_IP_PER_MINUTE": "0"})
            users = 5  # MAX_TASKS_PER_USER=2 (default): up to 10 runnable, 8 run at once
            tokens = [srv.token(new_user()) for _ in range(users)]
            ids, errors = [], []

            def submit(i):
                try:
                    r = srv.request("POST", "/api/start-task", token=tokens[i % users], body={
                        "prompt": "echo run %d > out.txt\n" % i, "repo_url": repos.url("octo/burst"),
                        "model": "shell"})
                    ids.append(r.json["task_id"]) if r.status == 200 else errors.append(r)
                except Exception as e:
                    errors.append(e)
            threads = [threading.Thread(target=submit, args=(i,)) for i in range(50)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            self.assertEqual(errors, [])
            deadline = time.time() + 120
            statuses = {}
            while time.time() < deadline and srv.proc.poll() is None:
                time.sleep(0.5)
                try:
                    for tok in tokens:
                        r = srv.request("GET", "/api/tasks?limit=500", token=tok)
                        statuses.update({int(k): v["status"] for k, v in r.json["tasks"].items()})
                except OSError:
                    continue
                if sum(1 for v in statuses.values() if v in ("completed", "failed", "cancelled")) == 50:
                    break
            time.sleep(0.3)
            if srv.proc.poll() is not None:
                err = srv.proc.stderr.read().decode(errors="replace").strip()
                done = sum(1 for v in statuses.values() if v in ("completed", "failed", "cancelled"))
                self.fail("bin/aicode died (exit %s) after %d of 50 tasks: %s" % (
                    srv.proc.returncode, done, err[-300:]))
            self.assertEqual(sorted(statuses), sorted(ids))
            self.assertEqual(sorted(statuses.values()), ["completed"] * 50)
        finally:
            if srv is not None:
                srv.close()
            repos.close()


if __name__ == "__main__":
    unittest.main()
