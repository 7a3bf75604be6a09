#!/usr/bin/env python3
"""Task engine benchmark (issue #3), with the `shell` agent on a small repository served over
smart HTTP by tests/fakes/git_http.py (in this process), against the real bin/aicode.

    python3 bench/tasks.py                 # everything, about 1-2 minutes
    SEQ_TASKS=50 WARMUP=3 BURST_TASKS=50 BURST_USERS=10 MEM_TASKS=4,10 ATTEMPTS=3 python3 bench/tasks.py

1. Latency: SEQ_TASKS tasks one after the other (after WARMUP tasks that are not counted).
   For each: the client's time from sending POST /api/start-task to seeing `completed` in
   GET /api/task-status/<id> (polled every POLL_MS on a keep-alive connection), and the
   server's own timestamps (created_at -> started_at = waiting to be claimed, started_at ->
   completed_at = the run) and the duration of each workflow step (from the task's events).
   This is the engine's own overhead: the agent is `echo ... > out.txt`.
2. Burst: BURST_TASKS tasks submitted at once (one thread each, spread over BURST_USERS users so
   MAX_TASKS_PER_USER, default 2, does not hide MAX_CONCURRENT_TASKS), with
   MAX_CONCURRENT_TASKS at its default (4) and at 8. All must complete, with distinct ids, and
   GET /api/tasks must list each of them exactly once. Total wall time and per-task latency.
3. Memory: VmRSS of bin/aicode (the host process only; sandboxed processes are separate
   processes) idle after a warm-up task, then with N tasks running `sleep 5` at once (one per
   user, MAX_CONCURRENT_TASKS=max(N, 4)), minus idle, divided by N, for each N in MEM_TASKS.
   The RSS of the sandbox processes (bwrap, bash, sleep) is reported separately.

PHASES=seq,burst,mem (the default) selects the phases.

Each phase runs on a fresh server. If bin/aicode dies during a phase, the crash (exit status,
last stderr line) is recorded and the phase is tried again, ATTEMPTS times in all; the exit
status of the script is then 1.

The machine is shared: before each phase the script waits (up to QUIET_WAIT s) until other
processes use less than QUIET_MAX_CORES cores, and reports how much CPU other processes used
during each phase, plus the busiest other processes at the start. Results: a markdown summary
on stdout and summary.md + results.json in bench/results/tasks-<timestamp>/ (gitignored).
Every server and fake started here is stopped on exit.
"""
import os
import statistics
import subprocess
import sys
import threading
import time

import common  # puts tests/e2e and tests/fakes on sys.path
from common import (CLK_TCK, ROOT, busy_ticks, iso_ms, log, own_ticks, peak_level, proc_ticks, rss_kb,
                    write_results)
from fakes.tasks_kit import GitRepos, task_server
from harness import new_user

SEQ_TASKS = int(os.environ.get("SEQ_TASKS", "50"))
WARMUP = int(os.environ.get("WARMUP", "3"))
BURST_TASKS = int(os.environ.get("BURST_TASKS", "50"))
BURST_USERS = int(os.environ.get("BURST_USERS", "10"))
MEM_TASKS = [int(n) for n in os.environ.get("MEM_TASKS", "4,10").split(",")]
POLL_MS = float(os.environ.get("POLL_MS", "5"))
ATTEMPTS = int(os.environ.get("ATTEMPTS", "3"))
PHASES = set(os.environ.get("PHASES", "seq,burst,mem").split(","))
QUIET_WAIT = float(os.environ.get("QUIET_WAIT", "60"))
QUIET_MAX_CORES = float(os.environ.get("QUIET_MAX_CORES", "0.15"))
TASK_TIMEOUT_S = 120

REPO_FILES = {"README.md": "# bench\n\nA small repository for the task benchmark.\n",
              "src/main.py": "print('hello')\n", "src/util.py": "def f():\n    return 1\n",
              "docs/notes.md": "notes\n", ".gitignore": "*.pyc\n"}


# -- measuring the machine ------------------------------------------------------------------------

def descendants(pid):
    table = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    s = f.read()
            except OSError:
                continue
            table[int(d)] = int(s[s.rindex(")") + 2:].split()[1])
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        for c, pp in table.items():
            if pp == p:
                out.append(c)
                stack.append(c)
    return out


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read()
    except OSError:
        return b""


def busiest_others(exclude, n=5):
    r = subprocess.run(["ps", "-eo", "pid,pcpu,etimes,comm", "--sort=-pcpu", "--no-headers"],
                       capture_output=True, text=True)
    out = []
    for line in r.stdout.splitlines():
        pid, pcpu, etimes, comm = line.split(None, 3)
        if int(pid) in exclude or float(pcpu) < 1.0:
            continue
        out.append("%s (%s%% avg over its %ss)" % (comm, pcpu, etimes))
        if len(out) >= n:
            break
    return out


def wait_quiet():
    return common.wait_quiet(QUIET_MAX_CORES, QUIET_WAIT, "machine busy (other processes use %.2f cores)")


class CpuWatch:
    """CPU used during a phase: aicode (with its reaped children), this process (with git_http's
    CGI children), and everything else on the machine."""

    def __init__(self, server_pid):
        self.pid = server_pid
        self.t0 = time.time()
        self.b0, self.s0, self.o0 = busy_ticks(), proc_ticks(server_pid), own_ticks()

    def stop(self):
        dt = time.time() - self.t0
        busy = busy_ticks() - self.b0
        server = proc_ticks(self.pid) - self.s0
        own = own_ticks() - self.o0
        other = max(0, busy - server - own)
        return {"seconds": round(dt, 2), "aicode_cpu_s": round(server / CLK_TCK, 2), "bench_cpu_s": round(own / CLK_TCK, 2),
                "aicode_cores": round(server / CLK_TCK / dt, 2),
                "bench_cores": round(own / CLK_TCK / dt, 2), "other_cores": round(other / CLK_TCK / dt, 2)}


# -- HTTP ------------------------------------------------------------------------------------------

class Client(common.Client):
    """A keep-alive connection to the server."""
    timeout_s, poll_ms, task_timeout_s = 30, POLL_MS, TASK_TIMEOUT_S


def dist(values):
    return common.dist(values, mean=True)


# -- phases ----------------------------------------------------------------------------------------

def phase_sequential(srv, repos, url):
    tok = srv.token(new_user())
    c = Client(srv.port, tok)
    for _ in range(WARMUP):
        tid = c.start(url)
        c.wait(tid)
    wait_quiet()
    watch = CpuWatch(srv.proc.pid)
    client_ms, queue_ms, run_ms, steps, statuses, ids = [], [], [], {}, [], []
    for i in range(SEQ_TASKS):
        t0 = time.perf_counter()
        tid = c.start(url)
        st, t1 = c.wait(tid)
        ids.append(tid)
        statuses.append(st)
        client_ms.append((t1 - t0) * 1000)
    cpu = watch.stop()
    # Server-side breakdown, read afterwards so it does not disturb the timing.
    for t in (c.row(tid) for tid in ids):
        queue_ms.append(iso_ms(t["started_at"]) - iso_ms(t["created_at"]))
        run_ms.append(iso_ms(t["completed_at"]) - iso_ms(t["started_at"]))
        for name, ms in c.step_durations(t["id"]).items():
            steps.setdefault(name, []).append(ms)
    return {
        "tasks": SEQ_TASKS, "completed": statuses.count("completed"),
        "client_ms": dist(client_ms), "queue_ms": dist(queue_ms), "run_ms": dist(run_ms),
        "steps_ms": {k: dist(v) for k, v in steps.items()}, "cpu": cpu,
    }


def phase_burst(srv, url, label):
    users = [new_user() for _ in range(BURST_USERS)]
    tokens = [srv.token(u) for u in users]
    # One warm-up task so the first burst does not pay for cold caches.
    c0 = Client(srv.port, tokens[0])
    c0.wait(c0.start(url))
    wait_quiet()
    ids, errors = [None] * BURST_TASKS, []
    barrier = threading.Barrier(BURST_TASKS + 1)

    def submit(i):
        c = Client(srv.port, tokens[i % BURST_USERS])
        barrier.wait()
        try:
            ids[i] = c.start(url)
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(BURST_TASKS)]
    for th in threads:
        th.start()
    watch = CpuWatch(srv.proc.pid)
    t0 = time.perf_counter()
    barrier.wait()
    for th in threads:
        th.join()
    submitted = time.perf_counter()
    if errors:
        raise RuntimeError("%d submissions failed: %s" % (len(errors), errors[:3]))
    pending = set(ids)
    owner = {tid: tokens[i % BURST_USERS] for i, tid in enumerate(ids)}
    final, done_at = {}, {}
    clients = {t: Client(srv.port, t) for t in tokens}
    max_running = 0
    deadline = time.time() + 600
    while pending and time.time() < deadline:
        running = 0
        for tid in sorted(pending):
            st = clients[owner[tid]].status(tid)
            if st in ("completed", "failed", "cancelled"):
                final[tid] = st
                done_at[tid] = time.perf_counter()
                pending.discard(tid)
            elif st == "running":
                running += 1
        max_running = max(max_running, running)
        time.sleep(0.02)
    total = time.perf_counter() - t0
    cpu = watch.stop()
    # None lost: every id listed once by its owner, all completed.
    listed = []
    for tok in tokens:
        _, body = clients[tok].request("GET", "/api/tasks?limit=500")
        listed += [int(k) for k in body["tasks"]]
    burst_listed = [i for i in listed if i in set(ids)]
    rows = [clients[owner[tid]].row(tid) for tid in ids]
    e2e_ms = [iso_ms(r["completed_at"]) - iso_ms(r["created_at"]) for r in rows if r["completed_at"]]
    queue_ms = [iso_ms(r["started_at"]) - iso_ms(r["created_at"]) for r in rows if r["started_at"]]
    run_ms = [iso_ms(r["completed_at"]) - iso_ms(r["started_at"]) for r in rows if r["completed_at"]]
    # Concurrency actually reached, from the server's timestamps.
    peak = peak_level([(iso_ms(r["started_at"]), 1) for r in rows] + [(iso_ms(r["completed_at"]), -1) for r in rows])
    return {
        "label": label, "tasks": BURST_TASKS, "users": BURST_USERS,
        "submitted_s": round(submitted - t0, 3), "total_s": round(total, 2),
        "completed": sum(1 for s in final.values() if s == "completed"),
        "failed": sum(1 for s in final.values() if s != "completed"), "not_finished": len(pending),
        "distinct_ids": len(set(ids)), "listed_once": len(burst_listed) == len(set(burst_listed)) == BURST_TASKS,
        "peak_concurrency": peak, "max_running_seen": max_running,
        "tasks_per_s": round(BURST_TASKS / total, 1),
        "created_to_completed_ms": dist(e2e_ms), "queue_ms": dist(queue_ms), "run_ms": dist(run_ms), "cpu": cpu,
    }


def phase_memory(srv, url, n):
    tok = srv.token(new_user())
    c = Client(srv.port, tok)
    c.wait(c.start(url))  # warm-up: modules loaded, store open
    time.sleep(1.5)
    idle = [rss_kb(srv.proc.pid)]
    for _ in range(4):
        time.sleep(0.25)
        idle.append(rss_kb(srv.proc.pid))
    idle_kb = statistics.median(idle)
    users = [srv.token(new_user()) for _ in range(n)]
    ids = []
    for tok_i in users:  # one task per user: MAX_TASKS_PER_USER stays at its default
        ci = Client(srv.port, tok_i)
        ids.append((ci, ci.request("POST", "/api/start-task", {"prompt": "sleep 5\n", "repo_url": url,
                                                             "model": "shell"})[1]["task_id"]))
    # Wait until every task's `sleep 5` runs.
    deadline = time.time() + 60
    while time.time() < deadline:
        if len([p for p in descendants(srv.proc.pid) if cmdline(p) == b"sleep\x005\x00"]) >= n:
            break
        time.sleep(0.05)
    running = sum(1 for ci, tid in ids if ci.status(tid) == "running")
    time.sleep(0.5)
    samples, sandbox = [], []
    for _ in range(6):
        samples.append(rss_kb(srv.proc.pid))
        sandbox.append(sum(rss_kb(p) for p in descendants(srv.proc.pid)))
        time.sleep(0.25)
    busy_kb = statistics.median(samples)
    for ci, tid in ids:
        ci.wait(tid)
    time.sleep(1.5)
    after_kb = rss_kb(srv.proc.pid)
    return {
        "tasks": n, "running_when_sampled": running, "idle_kb": idle_kb, "busy_kb": busy_kb,
        "after_kb": after_kb, "per_task_kb": round((busy_kb - idle_kb) / n, 1),
        "sandbox_processes_kb": statistics.median(sandbox),
        "sandbox_per_task_kb": round(statistics.median(sandbox) / n, 1),
    }


def machine():
    def sh(cmd):
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nproc": os.cpu_count(), "cpu": sh("awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo"),
        "kernel": sh("uname -r"), "loadavg": sh("cat /proc/loadavg"),
        "aicode_sha256": sh("sha256sum %s/bin/aicode | cut -c1-16" % ROOT),
        "bwrap": sh("bwrap --version"), "git": sh("git --version"),
    }


def fmt_dist(d):
    return "%.0f ms | %.0f ms | %.0f–%.0f ms" % (d["median"], d["p95"], d["min"], d["max"])


def crash_note(c):
    return "**bin/aicode crashed** (exit %s%s) in %d of %d attempt(s)" % (
        c["returncode"], ", " + c["message"] if c.get("message") else "", c["crashes"], c["attempts"])


def summary(res):
    m = res["machine"]
    out = ["## Task engine (bench/tasks.py)", "",
           "%s, %s cores, load average at start `%s`, aicode sha256 `%s`." % (
               m["date"], m["nproc"], m["loadavg"], m["aicode_sha256"]),
           "Busiest other processes at start: %s." % ("; ".join(res["others_at_start"]) or "none above 1%"), ""]
    seq = res.get("sequential")
    out += ["### Start-task to completed, %d sequential tasks (shell agent)" % SEQ_TASKS, ""]
    if seq is None:
        out += ["(not run: PHASES)", ""]
    elif seq.get("crashed"):
        out += [crash_note(seq), ""]
    else:
        out += ["| Measure | Median | p95 | Range |", "|---|---:|---:|---|",
                "| Client: POST start-task → `completed` seen | %s |" % fmt_dist(seq["client_ms"]),
                "| Server: created_at → started_at (waiting to be claimed) | %s |" % fmt_dist(seq["queue_ms"]),
                "| Server: started_at → completed_at (the run) | %s |" % fmt_dist(seq["run_ms"])]
        for name, d in seq["steps_ms"].items():
            out.append("| Step `%s` | %s |" % (name, fmt_dist(d)))
        out += ["", "Completed: %d/%d. CPU during the phase (cores): aicode %.2f, bench client + git server %.2f, "
                "other processes %.2f. CPU time per task: aicode with its sandboxed processes (bwrap, git, "
                "bash) %.0f ms, git server (git http-backend) and bench client %.0f ms." % (
                    seq["completed"], seq["tasks"], seq["cpu"]["aicode_cores"], seq["cpu"]["bench_cores"],
                    seq["cpu"]["other_cores"], 1000 * seq["cpu"]["aicode_cpu_s"] / seq["tasks"],
                    1000 * seq["cpu"]["bench_cpu_s"] / seq["tasks"]), ""]
    out += ["### %d tasks submitted at once (%d users)" % (BURST_TASKS, BURST_USERS), "",
            "| MAX_CONCURRENT_TASKS | Completed | Lost | Wall time | Tasks/s | Peak concurrency | "
            "created→completed median / p95 | Waiting median | Run median | CPU aicode / bench / other |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    if not res["bursts"]:
        out[-2:] = ["(not run: PHASES)"]
    for b in res["bursts"]:
        if b.get("crashed"):
            out.append("| %s | %s | | | | | | | | |" % (b["label"], crash_note(b)))
            continue
        lost = b["tasks"] - b["completed"] - b["failed"]
        out.append("| %s | %d/%d | %d | %.2f s | %.1f | %d | %.0f / %.0f ms | %.0f ms | %.0f ms | %.2f / %.2f / %.2f |" % (
            b["label"], b["completed"], b["tasks"], lost, b["total_s"], b["tasks_per_s"], b["peak_concurrency"],
            b["created_to_completed_ms"]["median"], b["created_to_completed_ms"]["p95"], b["queue_ms"]["median"],
            b["run_ms"]["median"], b["cpu"]["aicode_cores"], b["cpu"]["bench_cores"], b["cpu"]["other_cores"]))
        if b.get("crashes"):
            out.append("| %s (earlier attempts) | %s | | | | | | | | |" % (b["label"], crash_note(b)))
    out += ["", "### Memory per running task", "",
            "| Tasks running `sleep 5` | aicode idle RSS | aicode RSS while running | Per task | "
            "After they finished | Sandbox processes (all) | Sandbox per task |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    if not res["memory"]:
        out[-3:] = ["(not run: PHASES)"]
    for mem in res["memory"]:
        if mem.get("crashed"):
            out.append("| %d | %s | | | | | |" % (mem["tasks"], crash_note(mem)))
            continue
        out += ["| %d | %.1f MB | %.1f MB | **%.0f KB** | %.1f MB | %.1f MB | %.0f KB |" % (
                    mem["tasks"], mem["idle_kb"] / 1024, mem["busy_kb"] / 1024, mem["per_task_kb"],
                    mem["after_kb"] / 1024, mem["sandbox_processes_kb"] / 1024, mem["sandbox_per_task_kb"])]
    return "\n".join(out) + "\n"


def run_phase(repos, env, fn, name):
    """Runs fn(srv) on a fresh server. When the server dies during the phase, the crash is
    recorded and the phase is tried again (ATTEMPTS in all); other errors propagate."""
    crashes, last = 0, None
    for attempt in range(1, ATTEMPTS + 1):
        srv = task_server(repos, env=env)
        try:
            log("%s (attempt %d)" % (name, attempt))
            res = fn(srv)
            res.update(crashes=crashes, attempts=attempt)
            if crashes:
                res.update(returncode=last["returncode"], message=last["message"])
            return res
        except Exception as e:
            time.sleep(0.5)
            if srv.proc.poll() is None:
                raise
            crashes += 1
            err = srv.proc.stderr.read().decode(errors="replace").strip()
            last = {"returncode": srv.proc.returncode, "message": err.splitlines()[-1][:200] if err else "",
                    "error": repr(e)[:300]}
            log("bin/aicode died during %s: exit %s %s (%r)" % (name, last["returncode"], last["message"], e))
        finally:
            srv.close()
    return dict(last, crashed=True, crashes=crashes, attempts=ATTEMPTS, label=name)


def main():
    out_dir = os.path.join(ROOT, "bench", "results", "tasks-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out_dir, exist_ok=True)
    repos = GitRepos()
    repos.make("bench/small", dict(REPO_FILES))
    url = repos.url("bench/small")
    res = {"machine": machine(), "settings": {
        "SEQ_TASKS": SEQ_TASKS, "WARMUP": WARMUP, "BURST_TASKS": BURST_TASKS, "BURST_USERS": BURST_USERS,
        "MEM_TASKS": MEM_TASKS, "POLL_MS": POLL_MS, "ATTEMPTS": ATTEMPTS}}
    res["others_at_start"] = busiest_others({os.getpid()})
    log("machine: %s" % res["machine"])
    base_env = {"RATE_LIMIT_PER_MINUTE": "0", "RATE_LIMIT_IP_PER_MINUTE": "0"}
    try:
        if "seq" in PHASES:
            res["sequential"] = run_phase(repos, dict(base_env), lambda srv: phase_sequential(srv, repos, url),
                                          "phase 1: %d sequential tasks" % SEQ_TASKS)
        res["bursts"] = []
        for label, env in (("4 (default)", {}), ("8", {"MAX_CONCURRENT_TASKS": "8"})) if "burst" in PHASES else ():
            b = run_phase(repos, dict(base_env, **env), lambda srv: phase_burst(srv, url, label),
                          "phase 2: burst of %d, MAX_CONCURRENT_TASKS=%s" % (BURST_TASKS, label))
            b["label"] = label
            res["bursts"].append(b)
        res["memory"] = []
        for n in MEM_TASKS if "mem" in PHASES else ():
            m = run_phase(repos, dict(base_env, MAX_CONCURRENT_TASKS=str(max(n, 4))),
                          lambda srv: phase_memory(srv, url, n), "phase 3: memory with %d tasks running" % n)
            m["tasks"] = n
            res["memory"].append(m)
    finally:
        repos.close()
    res["loadavg_at_end"] = open("/proc/loadavg").read().strip()
    text = summary(res)
    write_results(out_dir, res, text)
    seq = res.get("sequential") or {"completed": SEQ_TASKS}
    ok = (not seq.get("crashed") and seq["completed"] == SEQ_TASKS and not any(
        m.get("crashes") for m in res["memory"]) and all(
        not b.get("crashes") and b["completed"] == b["tasks"] and b["listed_once"] and b["distinct_ids"] == b["tasks"]
        for b in res["bursts"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
