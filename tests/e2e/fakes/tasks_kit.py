"""Helpers for the task-engine e2e tests (tests/e2e/test_tasks_*.py).

    repos = GitRepos()                         # tests/fakes/git_http.py in a thread
    repos.make("octo/demo", {"README.md": "hi\\n"})
    srv = task_server(repos, env={...})        # bin/aicode allowed to clone from it
    tok = srv.token(user)
    tid = start_task(srv, tok, "echo hi > x.txt", repos.url("octo/demo"))
    task = wait_task(srv, tok, tid)            # the full row once terminal

Every task uses the `shell` agent (the prompt is a bash script run in the repo).
"""
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
E2E = os.path.dirname(HERE)
ROOT = os.path.abspath(os.path.join(E2E, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "fakes"))
sys.path.insert(0, E2E)

import git_http  # noqa: E402  (tests/fakes)
import github_api  # noqa: E402,F401
from harness import Server  # noqa: E402

TERMINAL = ("completed", "failed", "cancelled")
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
SHA1 = re.compile(r"^[0-9a-f]{40}$")


class GitRepos:
    """A repository root served by git_http (smart HTTP) in a background thread."""

    def __init__(self, **opts):
        self.root = tempfile.mkdtemp(prefix="aicode-tasks-repos-")
        self.server, self.thread, self.port = git_http.start(root=self.root, **opts)

    @property
    def host(self):
        return "127.0.0.1:%d" % self.port

    def url(self, name):
        return "http://%s/%s.git" % (self.host, name)

    def make(self, name, files, **kw):
        return git_http.make_repo(self.root, name, files, **kw)

    def path(self, name):
        return git_http.repo_path(self.root, name)

    def git(self, name, *args, check=True):
        r = git_http._git(list(args), cwd=self.path(name), check=check)
        return r.stdout.decode("utf-8", errors="replace")

    def branches(self, name):
        return git_http.branches(self.root, name)

    def requests(self):
        with self.server.lock:
            return list(self.server.requests)

    def close(self):
        self.server.close()
        shutil.rmtree(self.root, ignore_errors=True)


def task_server(repos=None, env=None, hosts=None, data_dir=None, start=True):
    """A Server allowed to clone over plain http from `repos` (and `hosts`)."""
    # Polling a task is not what these tests are about: no per-user rate limit.
    e = {"GIT_ALLOW_HTTP": "1", "RATE_LIMIT_PER_MINUTE": "1000000"}
    allowed = list(hosts or [])
    if repos is not None:
        allowed.insert(0, repos.host)
    if allowed:
        e["GIT_ALLOWED_HOSTS"] = ",".join(allowed)
    e.update(env or {})
    srv = Server(env=e, data_dir=data_dir, start=False)
    # mkdtemp makes the harness's temp dir 0700: the sandbox runs as an unprivileged
    # user that must traverse it to reach its workspace under <data>/sandboxes.
    os.chmod(srv.tmp, 0o711)
    if start:
        srv.start()
    return srv


def server_died(srv, err):
    """A clear failure when the server process is gone (instead of a bare ECONNREFUSED)."""
    code = srv.proc.poll() if srv.proc else None
    if code is None:
        time.sleep(0.2)
        code = srv.proc.poll() if srv.proc else None
    if code is not None:
        sig = " (killed by signal %d)" % -code if code < 0 else ""
        return AssertionError("the aicode server died: exit status %s%s (%s)" % (code, sig, err))
    return err


def request(srv, *args, **kw):
    try:
        return srv.request(*args, **kw)
    except OSError as e:
        raise server_died(srv, e) from e


def start_task(srv, token, prompt, repo_url, expect=200, headers=None, **fields):
    body = {"prompt": prompt, "repo_url": repo_url, "model": "shell"}
    body.update(fields)
    r = request(srv, "POST", "/api/start-task", body=body, token=token, headers=headers)
    if r.status != expect:
        raise AssertionError("start-task answered %d (expected %d): %s" % (r.status, expect, r.body))
    return r.json["task_id"] if expect == 200 else r


def task_row(srv, token, tid):
    r = request(srv, "GET", "/api/tasks/%d" % tid, token=token)
    if r.status != 200:
        raise AssertionError("GET /api/tasks/%d answered %d: %s" % (tid, r.status, r.body))
    return r.json["task"]


def wait_task(srv, token, tid, statuses=TERMINAL, timeout=30):
    deadline = time.time() + timeout
    while True:
        t = task_row(srv, token, tid)
        if t["status"] in statuses:
            return t
        if time.time() > deadline:
            raise AssertionError("task %d still %s after %ss (wanted %s): error=%r" % (
                tid, t["status"], timeout, statuses, t.get("error")))
        time.sleep(0.05)


def assistant_messages(task):
    return [m["content"] for m in task["chat_messages"] if m["role"] == "assistant"]


def read_sse(srv, path, token=None, headers=None, timeout=30):
    """GETs an SSE stream to its end. Returns (status, headers, events, raw) where events
    is a list of {"id", "event", "data"} (data parsed as JSON when possible)."""
    h = dict(headers or {})
    if token:
        h["Authorization"] = "Bearer " + token
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    try:
        conn.request("GET", path, headers=h)
        resp = conn.getresponse()
        raw = resp.read().decode("utf-8", errors="replace")
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        return resp.status, hdrs, parse_sse(raw), raw
    finally:
        conn.close()


def parse_sse(raw):
    events = []
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        ev = {"id": None, "event": "message", "data": None}
        data_lines = []
        seen = False
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "data":
                data_lines.append(value)
                seen = True
            elif field == "event":
                ev["event"] = value
                seen = True
            elif field == "id":
                ev["id"] = value
                seen = True
        if not seen or not data_lines and ev["event"] == "message":
            continue
        data = "\n".join(data_lines)
        try:
            ev["data"] = json.loads(data)
        except ValueError:
            ev["data"] = data
        events.append(ev)
    return events


def db_dump(srv):
    """Everything the store holds, as text (sqlite3 .dump, or pg_dump with AICODE_TEST_STORE=supabase)."""
    return srv.db_dump()


def db_query(srv, sql, params=None):
    """Rows as dicts, on whichever store the harness runs (`?` placeholders)."""
    return srv.sql(sql, params)


def pgrep(pattern):
    """Host processes whose command line contains `pattern` (pids), this process excluded."""
    r = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split() if int(p) != os.getpid()]


def wait_no_process(pattern, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not pgrep(pattern):
            return []
        time.sleep(0.1)
    return pgrep(pattern)


def wait_for(fn, timeout=10, interval=0.05, what="condition"):
    deadline = time.time() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(interval)


def sandbox_dirs(srv):
    d = os.path.join(srv.data_dir, "sandboxes")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []
