#!/usr/bin/env python3
"""E2B provider benchmark (issue #4): our E2B client (lualib/app/e2b.lua, app.sandbox.e2b)
against the LOCAL E2B double (tests/fakes/e2b.py, commands run under bubblewrap on this
machine). This measures the client and the protocol round trips, not E2B's cloud: a real
sandbox create takes E2B ~0.2-1 s more, and every envd call crosses the internet.

    /usr/bin/python3 bench/e2b.py                       # about 2-3 minutes
    SEQ_TASKS=30 WARMUP=2 CONC=20,50 CONC_LOCAL=1 SLEEP_S=2 /usr/bin/python3 bench/e2b.py

1. Overhead: the same small repository (served over smart HTTP by tests/fakes/git_http.py), the
   `shell` agent (`echo ... > out.txt`), SEQ_TASKS sequential tasks on each provider, local
   (bubblewrap) and e2b (the double), interleaved task by task in the same run so that machine
   noise hits both alike. Per task: the client's time from POST /api/start-task to seeing
   `completed` (GET /api/task-status polled every POLL_MS on a keep-alive connection), each
   workflow step's duration (from the task's events), and for e2b the number of control-plane and
   envd requests per task (from the double's request log).
2. Concurrency: CONC tasks running `sleep SLEEP_S` submitted at once (one thread each, one user,
   MAX_CONCURRENT_TASKS and MAX_TASKS_PER_USER raised to the count) on a fresh e2b server; all
   must complete. Wall time from the first submission to the last completion, peak concurrency
   (from the tasks' started_at / completed_at), aicode's peak and idle VmRSS (sampled every
   100 ms) and its CPU (utime+stime) during the phase; the double's CPU is reported separately.
   With CONC_LOCAL=1 the same phase also runs on the local provider for reference.

The double and git_http run as subprocesses (not in this process), so that the benchmark's own
polling does not share a GIL with them. Results: a markdown summary on stdout and results.json +
summary.md in bench/results/e2b-<timestamp>/. Everything started here is stopped on exit.
"""
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import common  # puts tests/e2e and tests/fakes on sys.path
from common import (CLK_TCK, ROOT, busy_ticks, dist, iso_ms, log, own_ticks, peak_level, proc_ticks, rss_kb,
                    write_results)
import git_http  # tests/fakes
from fakes.tasks_kit import task_server
from harness import new_user

PY = "/usr/bin/python3"
SEQ_TASKS = int(os.environ.get("SEQ_TASKS", "30"))
WARMUP = int(os.environ.get("WARMUP", "2"))
CONC = [int(n) for n in os.environ.get("CONC", "20,50").split(",") if n]
CONC_LOCAL = os.environ.get("CONC_LOCAL", "1") == "1"
SLEEP_S = float(os.environ.get("SLEEP_S", "2"))
POLL_MS = float(os.environ.get("POLL_MS", "5"))
TASK_TIMEOUT_S = 300
REPO_FILES = {"README.md": "# bench\n\nA small repository for the E2B benchmark.\n",
              "src/main.py": "print('hello')\n", "src/util.py": "def f():\n    return 1\n",
              "docs/notes.md": "notes\n", ".gitignore": "*.pyc\n"}


# -- processes -------------------------------------------------------------------------------------

class Sub:
    """A fake in a subprocess; the first stdout line says where it listens."""

    def __init__(self, argv, tmp, name):
        self.out = open(os.path.join(tmp, name + ".out"), "w+")
        self.err = open(os.path.join(tmp, name + ".err"), "w")
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=self.err, stdin=subprocess.DEVNULL, cwd=ROOT)
        deadline = time.time() + 20
        while time.time() < deadline:
            self.out.seek(0)
            line = self.out.readline()
            if "listening on http://" in line:
                self.url = line.split("listening on ")[1].split()[0].rstrip("/")
                self.port = int(self.url.rsplit(":", 1)[1])
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("%s did not start: %s" % (name, open(self.err.name).read()[-500:]))

    def http(self, method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            c.request(method, path, json.dumps(body) if body is not None else None,
                      {"Content-Type": "application/json"} if body is not None else {})
            r = c.getresponse()
            return json.loads(r.read() or b"null")
        finally:
            c.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()
        self.err.close()


QUIET_WAIT = float(os.environ.get("QUIET_WAIT", "60"))
QUIET_MAX_CORES = float(os.environ.get("QUIET_MAX_CORES", "0.3"))


def wait_quiet():
    return common.wait_quiet(QUIET_MAX_CORES, QUIET_WAIT)


class OtherLoad:
    """Cores used by processes other than ours (the given pids with their children, and this
    process with its children) during a phase: the noise the numbers carry."""

    def __init__(self, pids):
        self.pids = pids
        self.t0, self.b0 = time.time(), busy_ticks()
        self.p0 = sum(proc_ticks(p) for p in pids) + own_ticks()

    def stop(self):
        dt = time.time() - self.t0
        ours = sum(proc_ticks(p) for p in self.pids) + own_ticks() - self.p0
        return round(max(0, busy_ticks() - self.b0 - ours) / CLK_TCK / dt, 2)


class Sampler(threading.Thread):
    """VmRSS of a pid every 100 ms."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop_ev = pid, [], threading.Event()

    def run(self):
        while not self.stop_ev.is_set():
            self.samples.append(rss_kb(self.pid))
            self.stop_ev.wait(0.1)

    def stop(self):
        self.stop_ev.set()
        self.join()
        return max(self.samples) if self.samples else 0


# -- HTTP ------------------------------------------------------------------------------------------

class Client(common.Client):
    """A keep-alive connection to aicode."""
    timeout_s, poll_ms, task_timeout_s = 60, POLL_MS, TASK_TIMEOUT_S


# -- phases ----------------------------------------------------------------------------------------

def phase_overhead(servers, url, double):
    """servers: {"local": srv, "e2b": srv}. Interleaved sequential tasks."""
    clients = {k: Client(s.port, s.token(new_user())) for k, s in servers.items()}
    for _ in range(WARMUP):
        for c in clients.values():
            c.wait(c.start(url))
    double.http("POST", "/_fake/reset", {})
    wait_quiet()
    other = OtherLoad([s.proc.pid for s in servers.values()] + [double.proc.pid])
    res = {k: {"client_ms": [], "ids": [], "statuses": []} for k in servers}
    cpu0 = {k: (proc_ticks(s.proc.pid, False), proc_ticks(s.proc.pid)) for k, s in servers.items()}
    for i in range(SEQ_TASKS):
        order = list(servers) if i % 2 == 0 else list(reversed(list(servers)))
        for k in order:
            c = clients[k]
            t0 = time.perf_counter()
            tid = c.start(url)
            st, t1 = c.wait(tid)
            res[k]["client_ms"].append((t1 - t0) * 1000)
            res[k]["ids"].append(tid)
            res[k]["statuses"].append(st)
    cpu = {k: ((proc_ticks(s.proc.pid, False) - cpu0[k][0]) / CLK_TCK, (proc_ticks(s.proc.pid) - cpu0[k][1]) / CLK_TCK)
           for k, s in servers.items()}
    other_cores = other.stop()
    reqs = double.http("GET", "/_fake/requests")
    out = {"other_cores": other_cores}
    for k in servers:
        c = clients[k]
        steps, run_ms = {}, []
        for tid in res[k]["ids"]:
            row = c.row(tid)
            run_ms.append(iso_ms(row["completed_at"]) - iso_ms(row["started_at"]))
            for name, ms in c.step_durations(tid).items():
                steps.setdefault(name, []).append(ms)
        out[k] = {"tasks": SEQ_TASKS, "completed": res[k]["statuses"].count("completed"),
                  "client_ms": dist(res[k]["client_ms"]), "run_ms": dist(run_ms),
                  "steps_ms": {n: dist(v) for n, v in steps.items()},
                  "aicode_cpu_ms_per_task": round(cpu[k][0] * 1000 / SEQ_TASKS, 1),
                  "aicode_with_children_cpu_ms_per_task": round(cpu[k][1] * 1000 / SEQ_TASKS, 1)}
    kinds = {}
    for r in reqs if isinstance(reqs, list) else []:
        path = re.sub(r"/sandboxes/[a-z0-9]{20}", "/sandboxes/{id}", r["path"])
        key = "%s %s" % (r["method"], r.get("rpc") or path)
        kinds[key] = kinds.get(key, 0) + 1
    out["e2b_requests_per_task"] = {k: round(v / SEQ_TASKS, 2) for k, v in sorted(kinds.items())}
    return out


def phase_concurrency(srv, url, n, double_pid=None):
    tok = srv.token(new_user())
    c0 = Client(srv.port, tok)
    c0.wait(c0.start(url))  # warm-up
    time.sleep(1)
    idle_rss = rss_kb(srv.proc.pid)
    prompt = "sleep %s\necho done > done.txt\n" % SLEEP_S
    ids, errors = [None] * n, []
    barrier = threading.Barrier(n + 1)

    def submit(i):
        c = Client(srv.port, tok)
        barrier.wait()
        try:
            ids[i] = c.start(url, prompt)
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    wait_quiet()
    other = OtherLoad([srv.proc.pid] + ([double_pid] if double_pid else []))
    sampler = Sampler(srv.proc.pid)
    sampler.start()
    a0, ac0 = proc_ticks(srv.proc.pid, False), proc_ticks(srv.proc.pid)
    d0 = proc_ticks(double_pid) if double_pid else 0
    t0 = time.perf_counter()
    barrier.wait()
    for th in threads:
        th.join()
    if errors:
        raise RuntimeError("%d submissions failed: %s" % (len(errors), errors[:3]))
    pending, final = set(ids), {}
    c = Client(srv.port, tok)
    deadline = time.time() + TASK_TIMEOUT_S
    while pending and time.time() < deadline:
        for tid in sorted(pending):
            st = c.status(tid)
            if st in ("completed", "failed", "cancelled"):
                final[tid] = st
                pending.discard(tid)
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    other_cores = other.stop()
    aicode_cpu = (proc_ticks(srv.proc.pid, False) - a0) / CLK_TCK
    if double_pid:  # the double and the sandbox processes it ran (reaped children)
        double_cpu = (proc_ticks(double_pid) - d0) / CLK_TCK
    else:  # the local provider's sandbox processes are aicode's own children
        double_cpu = (proc_ticks(srv.proc.pid) - ac0) / CLK_TCK - aicode_cpu
    peak_rss = sampler.stop()
    rows = [c.row(tid) for tid in ids]
    peak = peak_level([(iso_ms(r["started_at"]), 1) for r in rows if r["started_at"]] +
                      [(iso_ms(r["completed_at"]), -1) for r in rows if r["completed_at"]])
    e2e = [iso_ms(r["completed_at"]) - iso_ms(r["created_at"]) for r in rows if r["completed_at"]]
    errs = sorted({r["error"] for r in rows if r["error"]})
    return {"tasks": n, "completed": sum(1 for s in final.values() if s == "completed"),
            "failed": sum(1 for s in final.values() if s != "completed"), "not_finished": len(pending),
            "errors": errs[:5], "wall_s": round(wall, 2), "peak_concurrency": peak,
            "created_to_completed_ms": dist(e2e),
            "aicode_rss_idle_mb": round(idle_rss / 1024, 1), "aicode_rss_peak_mb": round(peak_rss / 1024, 1),
            "aicode_cpu_s": round(aicode_cpu, 2), "aicode_cores": round(aicode_cpu / wall, 2),
            "aicode_cpu_ms_per_task": round(aicode_cpu * 1000 / n, 1),
            "double_cpu_s": round(double_cpu, 2) if double_cpu is not None else None,
            "other_cores": other_cores}


# -- main ------------------------------------------------------------------------------------------

def summary(res):
    o = res["overhead"]
    lines = ["## E2B provider benchmark (%s)" % res["when"], "",
             "Against the local E2B double (tests/fakes/e2b.py), not E2B's cloud. Machine: %s cores, %s." % (
                 res["cores"], res["kernel"]), "",
             "### Per-task overhead, shell agent, %d sequential tasks each (interleaved)" % SEQ_TASKS, "",
             "| provider | completed | start→completed median | p95 | min | max | aicode CPU / task |"
             " incl. its child processes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for k in ("local", "e2b"):
        d = o[k]["client_ms"]
        lines.append("| %s | %d/%d | %.0f ms | %.0f ms | %.0f ms | %.0f ms | %.1f ms | %.1f ms |" % (
            k, o[k]["completed"], o[k]["tasks"], d["median"], d["p95"], d["min"], d["max"],
            o[k]["aicode_cpu_ms_per_task"], o[k]["aicode_with_children_cpu_ms_per_task"]))
    lines += ["", "E2B overhead: median %+.0f ms, p95 %+.0f ms per task. Other processes used %.2f cores "
              "meanwhile." % (o["e2b"]["client_ms"]["median"] - o["local"]["client_ms"]["median"],
                              o["e2b"]["client_ms"]["p95"] - o["local"]["client_ms"]["p95"], o["other_cores"]), "",
        "| step (median ms) | local | e2b |", "|---|---:|---:|"]
    for step in ("create sandbox", "clone", "run agent", "capture results", "save"):
        lines.append("| %s | %s | %s |" % (step, o["local"]["steps_ms"].get(step, {}).get("median", "-"),
                                            o["e2b"]["steps_ms"].get(step, {}).get("median", "-")))
    lines += ["", "E2B requests per task: " + ", ".join("%s × %s" % (v, k) for k, v in
                                                         o["e2b_requests_per_task"].items()), "",
              "### Concurrent `sleep %s` tasks (one host)" % SLEEP_S, "",
              "| provider | tasks | completed | wall | peak concurrency | created→completed median / p95 |"
              " aicode RSS idle → peak | aicode CPU | sandbox side CPU (double + sandboxes, or bwrap children) |"
              " other processes |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["concurrency"]:
        d = r["created_to_completed_ms"]
        lines.append("| %s | %d | %d | %.2f s | %d | %.0f / %.0f ms | %.1f → %.1f MB | %.2f s (%.2f cores, %.0f ms/task)"
                     " | %s | %.2f cores |" % (r["provider"], r["tasks"], r["completed"], r["wall_s"], r["peak_concurrency"],
                                  d.get("median", 0), d.get("p95", 0), r["aicode_rss_idle_mb"],
                                  r["aicode_rss_peak_mb"], r["aicode_cpu_s"], r["aicode_cores"],
                                  r["aicode_cpu_ms_per_task"],
                                  "%.2f s" % r["double_cpu_s"], r["other_cores"]))
        if r["errors"]:
            lines.append("|  | errors: %s |" % "; ".join(r["errors"]))
    return "\n".join(lines) + "\n"


def main():
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = os.path.join(ROOT, "bench", "results", "e2b-" + stamp)
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="aicode-bench-e2b-")
    os.chmod(tmp, 0o711)
    key = "e2b_bench_" + uuid.uuid4().hex
    started = []
    res = {"when": stamp, "cores": os.cpu_count(), "kernel": os.uname().release,
           "config": {"SEQ_TASKS": SEQ_TASKS, "WARMUP": WARMUP, "CONC": CONC, "SLEEP_S": SLEEP_S,
                      "POLL_MS": POLL_MS}}
    try:
        root = os.path.join(tmp, "repos")
        git_http.make_repo(root, "bench/small", REPO_FILES)
        git = Sub([PY, os.path.join(ROOT, "tests", "fakes", "git_http.py"), "--port", "0", "--root", root],
                  tmp, "git_http")
        started.append(git)
        double = Sub([PY, os.path.join(ROOT, "tests", "fakes", "e2b.py"), "--port", "0", "--api-key", key,
                      "--max-sandboxes", "500"], tmp, "e2b")
        started.append(double)
        url = "http://127.0.0.1:%d/bench/small.git" % git.port
        host = "127.0.0.1:%d" % git.port
        e2b_env = {"SANDBOX_PROVIDER": "e2b", "E2B_API_KEY": key, "E2B_API_URL": double.url,
                   "E2B_SANDBOX_URL": double.url, "E2B_TEMPLATE": "base"}

        def server(env):
            srv = task_server(None, env=dict({"GIT_ALLOWED_HOSTS": host}, **env))
            started.append(srv)
            return srv

        log("phase 1: %d sequential tasks on each provider (+%d warm-up)" % (SEQ_TASKS, WARMUP))
        servers = {"local": server({}), "e2b": server(e2b_env)}
        res["overhead"] = phase_overhead(servers, url, double)
        for s in servers.values():
            s.close()
        res["concurrency"] = []
        for n in CONC:
            limits = {"MAX_CONCURRENT_TASKS": str(n), "MAX_TASKS_PER_USER": str(n)}
            for provider in (["e2b", "local"] if CONC_LOCAL else ["e2b"]):
                log("phase 2: %d concurrent `sleep %s` tasks, %s provider" % (n, SLEEP_S, provider))
                srv = server(dict(e2b_env, **limits) if provider == "e2b" else limits)
                r = phase_concurrency(srv, url, n, double.proc.pid if provider == "e2b" else None)
                r["provider"] = provider
                res["concurrency"].append(r)
                srv.close()
                if provider == "e2b":
                    left = double.http("GET", "/_control")["sandboxes"]
                    r["sandboxes_left"] = len(left)
    finally:
        for s in reversed(started):
            try:
                (s.close if hasattr(s, "close") else s.stop)()
            except Exception as e:
                log("stop failed: %r" % e)
        shutil.rmtree(tmp, ignore_errors=True)
    text = summary(res)
    write_results(out_dir, res, text)
    ok = all(res["overhead"][k]["completed"] == SEQ_TASKS for k in ("local", "e2b")) and all(
        r["completed"] == r["tasks"] and not r.get("sandboxes_left") for r in res["concurrency"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
