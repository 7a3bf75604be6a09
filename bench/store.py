#!/usr/bin/env python3
"""Store benchmark (issue #5): GET /api/tasks and POST /api/start-task throughput with
the Supabase store (PostgREST double on a real PostgreSQL 15) next to SQLite, same run.

    /usr/bin/python3 bench/store.py          # DURATION=10s CONNECTIONS=16 TASKS=50

Both servers run with WORKERS=2, ENGINE=off (the API only: tasks are queued, none run,
so the engine does not compete for the CPU) and the per-user rate limit off. wrk runs
on the same 2 cores. GET /api/tasks lists a user's TASKS tasks (limit 100); start-task
posts a new shell task each time (wrk Lua script). Results go to stdout (markdown);
every process started here is stopped on exit.
"""
import atexit
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import harness  # noqa: E402

DURATION = os.environ.get("DURATION", "10s")
CONNECTIONS = os.environ.get("CONNECTIONS", "16")
TASKS = int(os.environ.get("TASKS", "50"))

START_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("AICODE_TOKEN")
wrk.body = '{"prompt": "echo hi", "repo_url": "https://github.com/octocat/Hello-World", "model": "shell"}'
"""
GET_LUA = """
wrk.headers["Authorization"] = "Bearer " .. os.getenv("AICODE_TOKEN")
"""


def wrk(port, path, script, token):
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    out = subprocess.run(["wrk", "-t2", "-c" + CONNECTIONS, "-d" + DURATION, "-s", f.name,
                          "http://127.0.0.1:%d%s" % (port, path)],
                         env=dict(os.environ, AICODE_TOKEN=token), capture_output=True, text=True,
                         timeout=120).stdout
    os.unlink(f.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = re.search(r"Latency\s+(\S+)", out).group(1)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return rps, lat, int(bad.group(1)) if bad else 0, errors.group(1) if errors else "none"


def main():
    env = {"WORKERS": "2", "ENGINE": "off", "RATE_LIMIT_PER_MINUTE": "0", "MAX_BODY_BYTES": "1048576"}
    results = []
    for store in ("sqlite", "supabase"):
        extra = dict(env)
        if store == "supabase":
            harness.STORE = "supabase"
        srv = harness.Server(env=extra, workers=2)
        atexit.register(srv.close)
        user = harness.new_user()
        token = srv.token(user)
        for _ in range(TASKS):
            r = srv.request("POST", "/api/start-task", token=token,
                            body={"prompt": "echo hi", "repo_url": "https://github.com/octocat/Hello-World",
                                  "model": "shell"})
            assert r.status == 200, r
        get = wrk(srv.port, "/api/tasks", GET_LUA, token)
        start = wrk(srv.port, "/api/start-task", START_LUA, srv.token(harness.new_user()))
        results.append((store, get, start))
        srv.close()
    print("| store | GET /api/tasks (%d tasks) req/s | latency | start-task req/s | latency | non-2xx |" % TASKS)
    print("|---|---:|---:|---:|---:|---:|")
    for store, get, start in results:
        print("| %s | %.0f | %s | %.0f | %s | %d / %d |" % (store, get[0], get[1], start[0], start[1], get[2], start[2]))
    print("\nwrk -t2 -c%s -d%s, WORKERS=2, ENGINE=off; socket errors: %s" % (
        CONNECTIONS, DURATION, ", ".join("%s %s/%s" % (s, g[3], st[3]) for s, g, st in results)))


if __name__ == "__main__":
    main()
