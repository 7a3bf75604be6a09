"""Helpers shared by the task benchmarks bench/tasks.py and bench/e2b.py: their log line, CPU and
memory read from /proc, waiting for a quiet machine, a keep-alive client for aicode's task API and
the percentile summaries of their results.

Importing it puts tests/fakes and tests/e2e on sys.path (in that order), for harness,
fakes.tasks_kit and git_http.
"""
import datetime
import http.client
import json
import os
import statistics
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
sys.path.insert(0, os.path.join(ROOT, "tests", "fakes"))

CLK_TCK = os.sysconf("SC_CLK_TCK")
PROMPT = "echo \"hello from task $RANDOM\" > out.txt\n"


def log(msg):
    print("[bench] " + msg, file=sys.stderr, flush=True)


# -- measuring the machine ------------------------------------------------------------------------

def busy_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal


def proc_ticks(pid, children=True):
    """utime + stime of pid (with its reaped children's), in clock ticks; 0 when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return 0
    v = s[s.rindex(")") + 2:].split()
    t = int(v[11]) + int(v[12])
    if children:
        t += int(v[13]) + int(v[14])
    return t


def own_ticks():
    t = os.times()
    return int(round((t.user + t.system + t.children_user + t.children_system) * CLK_TCK))


def rss_kb(pid, field="VmRSS:"):
    """A memory field of /proc/PID/status in KB; 0 when the process is gone or has no such field."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_quiet(max_cores, wait_s, busy="machine busy (%.2f cores in use)"):
    """Waits (up to wait_s seconds) until the machine uses less than max_cores: it is shared.
    Returns the cores in use then, or None when it stayed busy (busy is the log line meanwhile)."""
    t0 = time.time()
    while time.time() - t0 < wait_s:
        b0 = busy_ticks()
        time.sleep(1)
        used = (busy_ticks() - b0) / CLK_TCK
        if used < max_cores:
            return used
        log((busy + ", waiting up to %.0fs") % (used, wait_s))
    log("machine still busy, measuring anyway")
    return None


# -- HTTP ------------------------------------------------------------------------------------------

class Client:
    """A keep-alive connection to aicode as one user. A benchmark subclasses it to set the
    timeouts and the polling interval below."""
    timeout_s = 30        # of each HTTP request
    poll_ms = 5           # between two GET /api/task-status in wait()
    task_timeout_s = 120  # wait()'s default

    def __init__(self, port, token):
        self.port, self.token, self.conn = port, token, None

    def request(self, method, path, body=None):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
            h = {"Authorization": "Bearer " + self.token}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                h["Content-Type"] = "application/json"
            try:
                self.conn.request(method, path, body=data, headers=h)
                resp = self.conn.getresponse()
                payload = resp.read()
                return resp.status, json.loads(payload) if payload else None
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise

    def start(self, url, prompt=PROMPT):
        status, body = self.request("POST", "/api/start-task", {"prompt": prompt, "repo_url": url, "model": "shell"})
        if status != 200:
            raise RuntimeError("start-task answered %d: %r" % (status, body))
        return body["task_id"]

    def status(self, tid):
        status, body = self.request("GET", "/api/task-status/%d" % tid)
        if status != 200:
            raise RuntimeError("task-status answered %d: %r" % (status, body))
        return body["task"]["status"]

    def row(self, tid):
        status, body = self.request("GET", "/api/tasks/%d" % tid)
        if status != 200:
            raise RuntimeError("GET /api/tasks/%d answered %d" % (tid, status))
        return body["task"]

    def wait(self, tid, timeout=None):
        """(final status, perf_counter when it was seen) of task tid."""
        timeout = self.task_timeout_s if timeout is None else timeout
        deadline = time.time() + timeout
        while True:
            st = self.status(tid)
            if st in ("completed", "failed", "cancelled"):
                return st, time.perf_counter()
            if time.time() > deadline:
                raise RuntimeError("task %d still %s after %ss" % (tid, st, timeout))
            time.sleep(self.poll_ms / 1000)

    def step_durations(self, tid):
        """{step name: duration_ms} of the finished workflow steps, from the task's events."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", "/api/tasks/%d/events" % tid, headers={"Authorization": "Bearer " + self.token})
            raw = conn.getresponse().read().decode()
        finally:
            conn.close()
        steps = {}
        for block in raw.split("\n\n"):
            for line in block.split("\n"):
                if line.startswith("data: {"):
                    d = json.loads(line[6:])
                    if d.get("type") == "step" and d["data"].get("state") == "finished":
                        steps[d["data"]["name"]] = d["data"]["duration_ms"]
        return steps


# -- results ---------------------------------------------------------------------------------------

def iso_ms(s):
    # 2026-11-27T09:29:33.726Z -> epoch ms
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000


def pct(values, p):
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def dist(values, mean=False):
    """n, median, p95, min, max (and the mean when asked) of values, rounded to 0.1; {"n": 0} when empty."""
    if not values:
        return {"n": 0}
    d = {"n": len(values), "median": round(statistics.median(values), 1), "p95": round(pct(values, 95), 1),
         "min": round(min(values), 1), "max": round(max(values), 1)}
    if mean:
        d["mean"] = round(statistics.mean(values), 1)
    return d


def peak_level(edges):
    """The highest running sum of (time, +1 or -1) edges taken in order: the peak concurrency."""
    level = peak = 0
    for _, d in sorted(edges):
        level += d
        peak = max(peak, level)
    return peak


def write_results(out_dir, res, text):
    """res as out_dir/results.json, the markdown summary text as out_dir/summary.md and on stdout."""
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(text)
    print(text)
    log("raw results: %s" % os.path.relpath(out_dir, ROOT))
