"""E2E: the Supabase store (issue #5) with several hosts sharing one database. Starts its own
PostgreSQL 15 (tools/pg.sh) with db/supabase migrated and its own PostgREST double
(tests/fakes/postgrest.py), whatever AICODE_TEST_STORE says, and two bin/aicode servers on it.

    /usr/bin/python3 tests/e2e/run.py 'test_supabase_store.py'

  * 100 tasks with the shell agent over two hosts with MAX_CONCURRENT_TASKS=2 (a cap for the
    whole database, not per host): never more than 2 running; every task completes exactly
    once (one completed run, one result commit with its own marker file; a task that was not
    interrupted ran exactly once, as counted by an HTTP witness each run calls and by its
    "running" events); one host is killed with SIGKILL mid-run and none is lost (the other
    host takes its tasks over when their lease expires).
  * the events of a task are streamed from the host that does not run it;
  * database down and back: /health 503 then 200, the API answers 503 JSON (never 500), the
    servers keep running and work again afterwards; a server starts while it is down;
  * PostgREST errors (code, message, details, hint) reach the log, never the client;
  * schema mismatch (a database without the migrations, or with older ones): check-config
    and serve fail with "schema mismatch: run aicode migrate with DATABASE_URL", /health
    says so.

SharedRateLimitTests (two more hosts on a database of their own): the per-IP limit of the
unauthenticated routes and the per-user limit are counted in the database, so two hosts
together allow each limit once (the 6th request of RATE_LIMIT_IP_PER_MINUTE=5 is a 429 JSON
error with Retry-After, on either host); a refused client costs the database nothing more
within its window; user and IP counters are apart; keys stay short whatever X-Forwarded-For
says; with the database down each host falls back to its own counter (one warning) and
goes back to the shared one afterwards.
"""
import http.server
import os
import re
import signal
import subprocess
import threading
import time
import unittest

import psycopg2

from fakes.tasks_kit import GitRepos, read_sse, start_task, wait_task
from harness import BIN, ROOT, Server, SupabaseStack, free_port, new_user

SHA1 = re.compile(r"^[0-9a-f]{40}$")
JWT_SECRET = "multi-host-shared-jwt-secret-0123456789abcdef"  # both hosts verify each other's tokens
MISMATCH = "schema mismatch: run aicode migrate with DATABASE_URL"
N_TASKS = 100


class Witness:
    """Counts the calls each task's run makes (GET /ran/<marker>) from inside its sandbox."""

    def __init__(self):
        self.hits = {}
        self.lock = threading.Lock()
        witness = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                marker = self.path.rsplit("/", 1)[-1]
                with witness.lock:
                    witness.hits[marker] = witness.hits.get(marker, 0) + 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def count(self, marker):
        with self.lock:
            return self.hits.get(marker, 0)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def engine_owner(srv, timeout=10):
    """The lease owner of a server's engine (its "engine started" log line)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in srv.log_lines():
            if line.get("msg") == "engine started" and line.get("owner"):
                return line["owner"]
        time.sleep(0.05)
    raise AssertionError("no engine started line in the log")


class MultiHostTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.stack = SupabaseStack(pool_size=24).start()
        cls.repos = GitRepos()
        cls.repos.make("octo/multi", {"README.md": "multi-host\n"})
        cls.url = cls.repos.url("octo/multi")
        cls.witness = Witness()
        cls.env = {
            "GIT_ALLOW_HTTP": "1", "GIT_ALLOWED_HOSTS": cls.repos.host, "JWT_SECRET": JWT_SECRET,
            "RATE_LIMIT_PER_MINUTE": "1000000", "RATE_LIMIT_IP_PER_MINUTE": "1000000",
            "MAX_CONCURRENT_TASKS": "2", "MAX_TASKS_PER_USER": "1000", "TASK_LEASE_SECONDS": "3",
        }
        cls.a = cls.host()
        cls.b = cls.host()
        cls.users = [new_user(), new_user()]
        cls.tokens = {}
        for u in cls.users:
            cls.stack.auth_user(u, u + "@example.test")
            cls.tokens[u] = cls.a.token(u)

    @classmethod
    def host(cls, **extra):
        srv = Server(env=dict(cls.env, **extra), stack=cls.stack, start=False)
        # The sandbox runs as an unprivileged user that must reach <data>/sandboxes.
        os.chmod(srv.tmp, 0o711)
        return srv.start()

    @classmethod
    def tearDownClass(cls):
        for srv in (cls.a, cls.b):
            srv.close()
        cls.witness.close()
        cls.repos.close()
        cls.stack.stop()

    def assertAlive(self, srv):
        self.assertIsNone(srv.proc.poll(), "the server died (exit status %s)" % srv.proc.poll())

    def assertJson503(self, r):
        self.assertEqual(r.status, 503, r)
        self.assertTrue(r.headers.get("content-type", "").startswith("application/json"), r.headers)
        self.assertEqual(set(r.json), {"error", "request_id"}, r)
        self.assertEqual(r.json["error"], "Database unavailable")

    # -- one task, seen from the other host ------------------------------------------
    def test_1_events_stream_from_the_other_host(self):
        user = self.users[0]
        tok = self.tokens[user]
        tid = start_task(self.a, tok, "sleep 1\necho streamed > streamed.txt\n", self.url)
        # Read B's stream from the start, while the task is queued or running somewhere.
        status, headers, events, raw = read_sse(self.b, "/api/tasks/%d/events" % tid, token=tok, timeout=60)
        self.assertEqual(status, 200, raw[:500])
        self.assertEqual(headers.get("content-type"), "text/event-stream")
        self.assertEqual(events[-1]["event"], "end", raw[-500:])
        self.assertEqual(events[-1]["data"], {"status": "completed"})
        statuses = [e["data"]["data"]["status"] for e in events if e["event"] == "status"]
        self.assertEqual(statuses[0], "pending")
        self.assertIn("running", statuses)
        self.assertEqual(statuses[-1], "completed")
        ids = [int(e["id"]) for e in events if e["id"] is not None]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(len(ids), len(set(ids)))
        self.assertTrue(any(e["event"] == "result" for e in events))
        # The same task through either host's API.
        for srv in (self.a, self.b):
            t = wait_task(srv, tok, tid)
            self.assertEqual(t["changed_files"], ["streamed.txt"])
        # Another user sees nothing of it on either host.
        other = self.tokens[self.users[1]]
        self.assertEqual(self.b.request("GET", "/api/tasks/%d" % tid, token=other).status, 404)
        self.assertEqual(self.a.request("GET", "/api/tasks/%d/events" % tid, token=other).status, 404)

    # -- 100 tasks, two hosts, one killed -----------------------------------------------
    def test_2_hundred_tasks_run_exactly_once_across_hosts_and_a_killed_host_loses_none(self):
        t0 = time.time()
        owner_a = engine_owner(self.a)
        owner_b = engine_owner(self.b)
        self.assertNotEqual(owner_a, owner_b)
        marker_of = {}
        for i in range(N_TASKS):
            user = self.users[i % 2]
            via = self.a if i % 2 == 0 else self.b
            marker = "m%03d" % i
            prompt = ("curl -s -m 5 -o /dev/null http://127.0.0.1:%d/ran/%s\n"
                      "echo %s > marker-%s.txt\n" % (self.witness.port, marker, marker, marker))
            tid = start_task(via, self.tokens[user], prompt, self.url, model="shell")
            marker_of[tid] = (marker, user)
        ids = sorted(marker_of)
        id_list = ",".join(str(i) for i in ids)

        # The cap holds across hosts: sample the running tasks of the whole database.
        peak = [0]
        sampling = [True]
        sample_errors = []

        def sample():
            conn = psycopg2.connect(self.stack.database_url)
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    while sampling[0]:
                        cur.execute("SELECT count(*) FROM tasks WHERE status = 'running'")
                        peak[0] = max(peak[0], cur.fetchone()[0])
                        time.sleep(0.01)
            except Exception as e:  # reported below
                sample_errors.append(e)
            finally:
                conn.close()

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        def counts():
            rows = self.stack.sql("SELECT status, count(*) AS n FROM tasks WHERE id IN (%s) GROUP BY status"
                                  % id_list)
            return {r["status"]: r["n"] for r in rows}

        # Kill A (SIGKILL) while it holds a task, once a good part of the work is done.
        deadline = time.time() + 40
        interrupted = []
        while time.time() < deadline:
            done = counts().get("completed", 0)
            if done >= 25:
                interrupted = [r["id"] for r in self.stack.sql(
                    "SELECT id FROM tasks WHERE status = 'running' AND lease_owner = ?", (owner_a,))]
                if interrupted:
                    self.a.proc.send_signal(signal.SIGKILL)
                    self.a.proc.wait(10)
                    # A may have claimed more between that query and the kill: its leases
                    # are still held (nobody recovers them before they expire).
                    interrupted = sorted(set(interrupted) | {r["id"] for r in self.stack.sql(
                        "SELECT id FROM tasks WHERE status = 'running' AND lease_owner = ?", (owner_a,))})
                    break
            time.sleep(0.01)
        self.assertTrue(interrupted, "host A never held a task after 25 completions: %r" % counts())
        killed_at = time.time()

        # Every task ends, on the surviving host.
        deadline = time.time() + 50
        while time.time() < deadline:
            c = counts()
            if sum(c.get(s, 0) for s in ("completed", "failed", "cancelled")) == N_TASKS:
                break
            time.sleep(0.1)
        sampling[0] = False
        sampler.join(5)
        elapsed = time.time() - t0
        self.assertEqual(counts(), {"completed": N_TASKS}, "all tasks must complete")
        self.assertFalse(sample_errors, sample_errors)
        self.assertLessEqual(peak[0], 2, "MAX_CONCURRENT_TASKS=2 is a cap for all hosts together")
        self.assertEqual(peak[0], 2, "the cap was never reached: the test would prove nothing")
        self.assertAlive(self.b)

        rows = {r["id"]: r for r in self.stack.sql(
            "SELECT id, status, attempts, run_count, commit_hash, changed_files, lease_owner, cancel_requested "
            "FROM tasks WHERE id IN (%s)" % id_list)}
        events = {}
        for r in self.stack.sql("SELECT task_id, type, data FROM task_events WHERE task_id IN (%s) ORDER BY id"
                                % id_list):
            events.setdefault(r["task_id"], []).append(r)
        rerun = []
        for tid in ids:
            marker, user = marker_of[tid]
            row = rows[tid]
            statuses = [e["data"].get("status") for e in events.get(tid, []) if e["type"] == "status"]
            with self.subTest(task=tid, marker=marker):
                # One completed run, with its own result.
                self.assertEqual(row["run_count"], 1)
                self.assertEqual(statuses.count("completed"), 1, statuses)
                self.assertEqual(statuses[-1], "completed", statuses)
                self.assertRegex(row["commit_hash"] or "", SHA1)
                self.assertEqual(row["changed_files"], ["marker-%s.txt" % marker])
                self.assertIsNone(row["lease_owner"])
                # At most one "running" event per attempt (a host killed between its claim
                # and its first event leaves none); the witness saw at most one call per attempt.
                self.assertGreaterEqual(statuses.count("running"), 1, statuses)
                self.assertLessEqual(statuses.count("running"), row["attempts"], statuses)
                self.assertGreaterEqual(self.witness.count(marker), 1)
                self.assertLessEqual(self.witness.count(marker), row["attempts"])
                if row["attempts"] == 1:
                    self.assertEqual(self.witness.count(marker), 1, "ran more than once")
                else:
                    rerun.append(tid)
                    self.assertEqual(row["attempts"], 2)
                    self.assertIn(tid, interrupted, "only a task of the killed host may run twice")
                    # re-queued after the kill: a "pending" after the first attempt's
                    # "running", or (killed before that event) a second "pending"
                    if statuses.count("running") == 2:
                        self.assertIn("pending", statuses[statuses.index("running") + 1:], statuses)
                    else:
                        self.assertGreaterEqual(statuses.count("pending"), 2, statuses)
        # The tasks A held when it was killed were taken over, not lost.
        self.assertTrue(set(interrupted) <= set(rerun) | {t for t in interrupted if rows[t]["attempts"] == 1})
        self.assertTrue(rerun, "no task was interrupted by the kill")
        # The API of the surviving host shows the same results.
        t = wait_task(self.b, self.tokens[marker_of[rerun[0]][1]], rerun[0])
        self.assertEqual(t["status"], "completed")
        self.assertEqual(t["changed_files"], ["marker-%s.txt" % marker_of[rerun[0]][0]])
        listed = self.b.request("GET", "/api/tasks?limit=500", token=self.tokens[self.users[0]])
        self.assertEqual(listed.status, 200)
        mine = self.stack.sql("SELECT id FROM tasks WHERE user_id = ?", (self.users[0],))
        self.assertEqual(listed.json["total_tasks"], len(mine))
        self.assertEqual(sorted(int(k) for k in listed.json["tasks"]), sorted(r["id"] for r in mine))
        self.assertTrue({t for t in ids if marker_of[t][1] == self.users[0]} <= {r["id"] for r in mine})
        print("# %d tasks over two hosts in %.1fs (kill at +%.1fs, %d re-run)"
              % (N_TASKS, elapsed, killed_at - t0, len(rerun)), flush=True)
        self.assertLess(elapsed, 90, "about 45 s on the reference machine")

    # -- database down and back ---------------------------------------------------------
    def test_3_database_down_and_back(self):
        srv = self.b
        tok = self.tokens[self.users[0]]
        self.assertEqual(srv.request("GET", "/health").status, 200)
        self.stack.control("down")
        try:
            h = srv.request("GET", "/health")
            self.assertEqual(h.status, 503, h)
            self.assertEqual(h.json["store"], {"backend": "supabase", "reachable": False})
            self.assertEqual(h.json["status"], "unavailable")
            for method, path, body in (("GET", "/api/tasks", None), ("GET", "/api/projects", None),
                                       ("GET", "/api/tasks/1", None), ("GET", "/api/auth/verify", None),
                                       ("POST", "/api/start-task", {"prompt": "x", "repo_url": self.url,
                                                                    "model": "shell"}),
                                       ("POST", "/api/projects", {"name": "n",
                                                                  "repo_url": "https://github.com/o/down"})):
                with self.subTest(method=method, path=path):
                    self.assertJson503(srv.request(method, path, token=tok, body=body))
            self.assertEqual(srv.request("GET", "/ping").status, 200)
            # A server can start while the database is down (not a configuration problem).
            late = self.host()
            try:
                self.assertEqual(late.request("GET", "/health").status, 503)
            finally:
                late.close()
            time.sleep(1)  # the engine loop keeps polling a dead database
            self.assertAlive(srv)
        finally:
            self.stack.control("up")
        deadline = time.time() + 10
        while srv.request("GET", "/health").status != 200:
            self.assertLess(time.time(), deadline, "the store did not come back")
            time.sleep(0.1)
        self.assertEqual(srv.request("GET", "/health").json["store"], {"backend": "supabase", "reachable": True})
        tid = start_task(srv, tok, "echo back > back.txt\n", self.url)
        t = wait_task(srv, tok, tid, timeout=30)
        self.assertEqual(t["status"], "completed", t["error"])
        self.assertAlive(srv)
        unreachable = [l for l in srv.log_lines() if l.get("msg") == "supabase store: database unreachable"]
        self.assertTrue(unreachable, "the outage is logged")
        self.assertLess(len(unreachable), 20, "the outage is logged, not flooded")

    # -- PostgREST errors ------------------------------------------------------------------
    def test_4_postgrest_errors_do_not_leak(self):
        srv = self.b
        tok = self.tokens[self.users[1]]
        secret_bits = ("canary-internal-message", "canary-detail", "canary-hint", "P0001", "42501",
                       "projects_with_counts", "permission denied", "postgrest", "PGRST")
        # A write PostgREST refuses with a PostgreSQL error (400 P0001, with details and hint).
        self.stack.sql("""
            CREATE FUNCTION public.canary_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'canary-internal-message' USING DETAIL = 'canary-detail', HINT = 'canary-hint';
            END $$;
            CREATE TRIGGER canary_refuse BEFORE INSERT ON public.projects
                FOR EACH ROW EXECUTE FUNCTION public.canary_refuse();""")
        try:
            r = srv.request("POST", "/api/projects", token=tok, body={"name": "n",
                                                                    "repo_url": "https://github.com/o/leak"})
        finally:
            self.stack.sql("DROP TRIGGER canary_refuse ON public.projects; DROP FUNCTION public.canary_refuse()")
        self.assertJson503(r)
        # A read it refuses (403 42501: the service role lost its grant on the view).
        self.stack.sql("REVOKE SELECT ON public.projects_with_counts FROM service_role")
        try:
            r2 = srv.request("GET", "/api/projects", token=tok)
        finally:
            self.stack.sql("GRANT SELECT ON public.projects_with_counts TO service_role")
        self.assertJson503(r2)
        for resp in (r, r2):
            for bit in secret_bits:
                self.assertNotIn(bit.lower(), resp.body.lower())
                for v in resp.headers.values():
                    self.assertNotIn(bit.lower(), v.lower())
        # The operator's log has what PostgREST said.
        log = srv.log_text()
        self.assertIn("canary-internal-message", log)
        self.assertIn("canary-hint", log)
        self.assertIn("42501", log)
        # And the service-role key never appears in a log or a response.
        self.assertNotIn(self.stack.service_key, log)
        self.assertNotIn(self.stack.service_key, r.body + r2.body)
        self.assertEqual(srv.request("GET", "/api/projects", token=tok).status, 200)
        self.assertAlive(srv)

    # -- schema mismatch ----------------------------------------------------------------------
    def test_5_schema_mismatch_at_start(self):
        self.stack.sql("DROP DATABASE IF EXISTS aicode_nomig")
        self.stack.sql("CREATE DATABASE aicode_nomig")
        url = self.stack.database_url.rsplit("/", 1)[0] + "/aicode_nomig"
        bare = SupabaseStack(migrate=False, database_url=url).start()
        try:
            env = Server(env=dict(self.env, PORT=str(free_port())), stack=bare, start=False)
            try:
                for stage in ("no migrations", "older migrations"):
                    with self.subTest(stage=stage):
                        r = env.cli("check-config")
                        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                        self.assertIn(MISMATCH, r.stdout + r.stderr)
                        self.assertNotIn("configuration ok", r.stdout)
                        s = subprocess.run([BIN, "serve"], cwd=ROOT, env=env.env, capture_output=True, text=True,
                                           timeout=30)
                        self.assertNotEqual(s.returncode, 0)
                        self.assertIn(MISMATCH, s.stderr)
                        self.assertNotIn(self.stack.service_key, s.stdout + s.stderr + r.stdout + r.stderr)
                    # An older schema: the bookkeeping table without the newest migration.
                    bare.sql("CREATE TABLE IF NOT EXISTS public.schema_migrations (version text PRIMARY KEY, "
                             "name text NOT NULL, checksum text NOT NULL, applied_at timestamptz DEFAULT now());"
                             "GRANT SELECT ON public.schema_migrations TO service_role;"
                             "INSERT INTO public.schema_migrations (version, name, checksum) VALUES "
                             "('001', '001_original_schema.sql', 'x'), ('002', '002_task_engine.sql', 'x') "
                             "ON CONFLICT DO NOTHING")
            finally:
                env.close()
        finally:
            bare.stop()
            self.stack.sql("DROP DATABASE IF EXISTS aicode_nomig WITH (FORCE)")
        # The migrated database passes.
        r = self.b.cli("check-config")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("configuration ok", r.stdout)
        # /health of a running server says so when the schema goes missing under it.
        # (the newest migration: the one the store's SCHEMA_VERSION names)
        row = self.stack.sql("SELECT * FROM schema_migrations ORDER BY version DESC LIMIT 1")[0]
        self.stack.sql("DELETE FROM schema_migrations WHERE version = ?", (row["version"],))
        try:
            h = self.b.request("GET", "/health")
        finally:
            self.stack.sql("INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)",
                           (row["version"], row["name"], row["checksum"], row["applied_at"]))
        self.assertEqual(h.status, 503, h)
        self.assertFalse(h.json["store"]["reachable"])
        self.assertIn(MISMATCH, h.json["store"]["problem"])
        self.assertEqual(self.b.request("GET", "/health").status, 200)


class SharedRateLimitTests(unittest.TestCase):
    """RATE_LIMIT_IP_PER_MINUTE=5 and RATE_LIMIT_PER_MINUTE=5 on two hosts sharing one database.
    TRUST_PROXY=1: each test is a client of its own (X-Forwarded-For), with a fresh budget."""

    LIMIT = 5
    BACKOFF_S = 5  # app.ratelimit STORE_BACKOFF: the store is not asked for that long after a failure

    @classmethod
    def setUpClass(cls):
        cls.stack = SupabaseStack(pool_size=8).start()
        env = {"JWT_SECRET": JWT_SECRET, "RATE_LIMIT_IP_PER_MINUTE": str(cls.LIMIT),
               "RATE_LIMIT_PER_MINUTE": str(cls.LIMIT), "TRUST_PROXY": "1"}
        cls.a = Server(env=env, stack=cls.stack)
        cls.b = Server(env=env, stack=cls.stack)

    @classmethod
    def tearDownClass(cls):
        for srv in (cls.a, cls.b):
            srv.close()
        cls.stack.stop()

    def assert429(self, r):
        self.assertEqual(r.status, 429, r)
        self.assertTrue(r.headers.get("content-type", "").startswith("application/json"), r.headers)
        self.assertEqual(set(r.json), {"error", "request_id"}, r)
        self.assertEqual(r.json["error"], "Rate limit exceeded")
        self.assertEqual(r.headers.get("x-request-id"), r.json["request_id"])
        self.assertRegex(r.headers.get("retry-after", ""), r"^\d+$")
        self.assertGreaterEqual(int(r.headers["retry-after"]), 1)
        self.assertLessEqual(int(r.headers["retry-after"]), 60)

    def hits(self, key):
        rows = self.stack.sql("SELECT count FROM rate_limits WHERE key = ?", (key,))
        return rows[0]["count"] if rows else 0

    def refresh_token(self):
        user = new_user()
        return user, self.a.tokens(user)  # the CLI: not an HTTP request, not counted

    def test_1_per_ip_limit_holds_across_hosts(self):
        user, toks = self.refresh_token()
        ip = "203.0.113.10"
        client = {"X-Forwarded-For": ip}
        refresh = {"refresh_token": toks["refresh_token"]}
        for i in range(self.LIMIT):
            srv = self.a if i % 2 == 0 else self.b
            r = srv.request("POST", "/api/auth/refresh", body=refresh, headers=client)
            self.assertEqual(r.status, 200, (i, r))
        # The 6th, on either host (B had only 2 of them), and any route of the per-IP limiter.
        self.assert429(self.b.request("POST", "/api/auth/refresh", body=refresh, headers=client))
        self.assert429(self.a.request("POST", "/api/auth/refresh", body=refresh, headers=client))
        self.assert429(self.a.request("POST", "/api/auth/token", body={"user_id": user}, headers=client))
        self.assertEqual(self.hits("rl:ip:" + ip), self.LIMIT + 2)
        # A refused client costs the database nothing more until its window ends.
        for i in range(20):
            srv = self.a if i % 2 == 0 else self.b
            self.assert429(srv.request("POST", "/api/auth/refresh", body=refresh, headers=client))
        self.assertEqual(self.hits("rl:ip:" + ip), self.LIMIT + 2)
        # Another client is not affected, nor is the user's own (authenticated) budget.
        self.assertEqual(self.b.request("POST", "/api/auth/refresh", body=refresh,
                                        headers={"X-Forwarded-For": "203.0.113.11"}).status, 200)
        r = self.a.request("GET", "/api/projects", token=toks["access_token"], headers=client)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.hits("rl:u:" + user), 1)
        # Health endpoints are exempt.
        self.assertEqual(self.b.request("GET", "/health", headers=client).status, 200)

    def test_2_per_user_limit_holds_across_hosts(self):
        user, toks = self.refresh_token()
        for i in range(self.LIMIT):
            srv = self.a if i % 2 == 0 else self.b
            r = srv.request("GET", "/api/projects", token=toks["access_token"])
            self.assertEqual(r.status, 200, (i, r))
        self.assert429(self.b.request("GET", "/api/projects", token=toks["access_token"]))
        self.assert429(self.a.request("GET", "/api/auth/verify", token=toks["access_token"]))
        self.assertEqual(self.hits("rl:u:" + user), self.LIMIT + 2)

    def test_3_keys_stay_short_whatever_the_client_claims(self):
        forged = "f" * 300
        for srv in (self.a, self.b):
            r = srv.request("POST", "/api/auth/token", body={"user_id": "not-a-uuid"},
                            headers={"X-Forwarded-For": "198.51.100.1, " + forged})
            self.assertEqual(r.status, 400, r)  # counted, then refused by the handler
        self.assertEqual(self.hits("rl:ip:" + "f" * 64), 2)
        longest = self.stack.sql("SELECT max(length(key)) AS n FROM rate_limits")[0]["n"]
        self.assertEqual(longest, len("rl:ip:") + 64)  # the forged one, cut

    def test_4_database_down_each_host_counts_alone_then_shares_again(self):
        client = {"X-Forwarded-For": "192.0.2.40"}
        bad = {"user_id": "not-a-uuid"}  # a 400 that needs no database: only the limiter does
        self.stack.control("down")
        try:
            for srv in (self.a, self.b):
                for i in range(self.LIMIT):
                    r = srv.request("POST", "/api/auth/token", body=bad, headers=client)
                    self.assertEqual(r.status, 400, (i, r))
                # Fails open to the host's own counter: still a limit, per host.
                self.assert429(srv.request("POST", "/api/auth/token", body=bad, headers=client))
        finally:
            self.stack.control("up")
        for srv in (self.a, self.b):
            warned = [l for l in srv.log_lines()
                      if l.get("msg") == "rate limit: shared counter unavailable, using the local one"]
            self.assertEqual(len(warned), 1, "one warning per outage and host, not one per request")
            self.assertIsNone(srv.proc.poll())
        self.assertEqual(self.hits("rl:ip:192.0.2.40"), 0)
        # After the back-off the database counts again, for both hosts together.
        time.sleep(self.BACKOFF_S + 0.2)
        client = {"X-Forwarded-For": "192.0.2.41"}
        for i in range(self.LIMIT):
            srv = self.a if i % 2 == 0 else self.b
            self.assertEqual(srv.request("POST", "/api/auth/token", body=bad, headers=client).status, 400, i)
        self.assert429(self.b.request("POST", "/api/auth/token", body=bad, headers=client))
        self.assertEqual(self.hits("rl:ip:192.0.2.41"), self.LIMIT + 1)

    def test_5_old_windows_are_cleaned_up_in_bounded_batches(self):
        # 1200 windows that ended two hours ago (a crowd of addresses gone since) and 10
        # live ones. The call that draws the clean-up (1 in 100) deletes at most 500 of the
        # oldest, never a live one.
        self.stack.sql("INSERT INTO rate_limits (key, window_start, count) "
                       "SELECT 'rl:ip:old-' || i, now() - interval '2 hours' - i * interval '1 second', 1 "
                       "FROM generate_series(1, 1200) i")
        self.stack.sql("INSERT INTO rate_limits (key, window_start, count) "
                       "SELECT 'rl:ip:live-' || i, now(), 1 FROM generate_series(1, 10) i")
        self.stack.sql("""
            DO $$
            DECLARE n integer := 0;
            BEGIN
                LOOP
                    PERFORM public.rate_limit_hit('rl:ip:cleanup-probe', 60, 1000000);
                    n := n + 1;
                    EXIT WHEN n >= 5000 OR (SELECT count(*) FROM public.rate_limits
                                             WHERE key LIKE 'rl:ip:old-%') < 1200;
                END LOOP;
            END $$""")
        old = self.stack.sql("SELECT count(*) AS n, max(substr(key, 11)::int) AS oldest_left "
                             "FROM rate_limits WHERE key LIKE 'rl:ip:old-%'")[0]
        self.assertEqual(old["n"], 700, "one clean-up, 500 rows")
        self.assertEqual(old["oldest_left"], 700, "the oldest went first")
        self.assertEqual(self.stack.sql("SELECT count(*) AS n FROM rate_limits WHERE key LIKE 'rl:ip:live-%'")[0]["n"],
                         10)
        indexes = self.stack.sql("SELECT indexdef FROM pg_indexes WHERE tablename = 'rate_limits'")
        self.assertTrue(any("(window_start)" in i["indexdef"] for i in indexes), indexes)


if __name__ == "__main__":
    unittest.main()
