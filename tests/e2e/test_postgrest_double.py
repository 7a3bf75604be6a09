"""The Supabase schema (db/supabase/) and the PostgREST double (tests/fakes/postgrest.py)
on a real PostgreSQL 15 started with tools/pg.sh: migrations, row-level security under
real roles and JWT claims, the auth.users trigger, the queue functions under
concurrency, PostgREST's wire semantics and error mapping, faults and outages.

    /usr/bin/python3 tests/e2e/run.py 'test_postgrest_double.py'
"""
import http.client
import importlib.util
import json
import os
import signal
import subprocess
import threading
import time
import unittest
import urllib.parse
import uuid

from harness import Response

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PG_SH = os.path.join(ROOT, "tools", "pg.sh")
MIGRATE = os.path.join(ROOT, "tools", "migrate_pg.sh")
DOUBLE = os.path.join(ROOT, "tests", "fakes", "postgrest.py")
MIGRATIONS = sorted(f for f in os.listdir(os.path.join(ROOT, "db", "supabase")) if f.endswith(".sql"))
SECRET = "test-jwt-secret-for-the-postgrest-double-0123456789"
ERROR_KEYS = {"code", "message", "details", "hint"}

S = {}  # module state: dir, url, server, keys, pg (postgrest module), first_migrate


def _run(cmd, env=None, timeout=120):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def setUpModule():
    d = "/tmp/aicode-pgtest-%s" % uuid.uuid4().hex[:12]
    r = _run([PG_SH, "start", d], timeout=600)
    if r.returncode != 0:
        raise RuntimeError("tools/pg.sh start failed: %s %s" % (r.stdout, r.stderr))
    S["dir"] = d
    try:
        S["url"] = r.stdout.strip().splitlines()[-1]
        m = _run([MIGRATE, S["url"]])
        if m.returncode != 0:
            raise RuntimeError("migrate_pg.sh failed: %s %s" % (m.stdout, m.stderr))
        S["first_migrate"] = m.stdout
        # Loaded by path (tests/fakes is not a package); needs psycopg2, which pg.sh installs.
        spec = importlib.util.spec_from_file_location("postgrest_double", DOUBLE)
        postgrest = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(postgrest)
        S["pg"] = postgrest
        S["log"] = os.path.join(d, "postgrest.log")
        server, _, _ = postgrest.start(database_url=S["url"], jwt_secret=SECRET, pool_size=8, log=S["log"])
        S["server"] = server
        S["keys"] = server.keys
    except BaseException:
        _run([PG_SH, "stop", d])
        raise


def tearDownModule():
    if S.get("server"):
        S["server"].close()
    if S.get("dir"):
        r = _run([PG_SH, "stop", S["dir"]])
        assert r.returncode == 0 and not os.path.exists(S["dir"]), r.stderr


# -- helpers -------------------------------------------------------------------

def api(method, path, body=None, auth="service", headers=None, raw=None):
    """auth: "service" (service_role key as apikey and bearer, as the backend does),
    "anon" (anon key only), None (no key), or a user JWT (anon apikey + bearer JWT,
    as supabase-js sends)."""
    h = {}
    keys = S["keys"]
    if auth == "service":
        h["apikey"] = keys["service_role"]
        h["Authorization"] = "Bearer " + keys["service_role"]
    elif auth == "anon":
        h["apikey"] = keys["anon"]
    elif auth is not None:
        h["apikey"] = keys["anon"]
        h["Authorization"] = "Bearer " + auth
    if body is not None:
        raw = json.dumps(body)
    if raw is not None:
        h["Content-Type"] = "application/json"
    h.update(headers or {})
    conn = http.client.HTTPConnection("127.0.0.1", S["server"].server_address[1], timeout=30)
    try:
        conn.request(method, "/rest/v1" + path, body=raw, headers=h)
        r = conn.getresponse()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode())
    finally:
        conn.close()


def rpc(fn, auth="service", headers=None, **args):
    return api("POST", "/rpc/" + fn, args, auth=auth, headers=headers)


def control(name, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", S["server"].server_address[1], timeout=10)
    try:
        conn.request("POST", "/_control/" + name, body=json.dumps(body or {}),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        conn.close()


def db(query, args=()):
    """Runs SQL as the superuser (setup and inspection, outside the API)."""
    import psycopg2
    conn = psycopg2.connect(S["url"])
    try:
        with conn, conn.cursor() as cur:
            cur.execute(query, args)
            return cur.fetchall() if cur.description else cur.rowcount
    finally:
        conn.close()


def new_user(email=None, meta=None):
    uid = str(uuid.uuid4())
    status, body = control("auth_users", {"id": uid, "email": email or uid[:8] + "@example.test",
                                          "raw_user_meta_data": meta})
    assert status == 201 and body["id"] == uid, (status, body)
    return uid


def token(uid, **kw):
    return S["pg"].user_jwt(uid, SECRET, **kw)


def make_tasks(uid, n, **cols):
    rows = [dict({"user_id": uid, "repo_url": "https://github.com/o/r", "agent": "claude",
                  "chat_messages": [{"role": "user", "content": "task %d" % i}]}, **cols) for i in range(n)]
    r = api("POST", "/tasks?select=id", rows, headers={"Prefer": "return=representation"})
    assert r.status == 201, r
    return [row["id"] for row in r.json]


def assert_error(tc, r, status, code):
    tc.assertEqual(r.status, status, r)
    tc.assertEqual(set(r.json), ERROR_KEYS, r)
    tc.assertEqual(r.json["code"], code, r)
    tc.assertIsInstance(r.json["message"], str)


# -- migrations ------------------------------------------------------------------

class MigrationTest(unittest.TestCase):
    def test_first_run_applies_every_file_in_order(self):
        out = S["first_migrate"]
        applied = [line.split()[1] for line in out.splitlines() if line.startswith("apply ")]
        self.assertEqual(applied, MIGRATIONS)
        self.assertIn("migrations: %d applied, 0 skipped" % len(MIGRATIONS), out)

    def test_second_run_is_a_no_op(self):
        before = db("SELECT version, applied_at FROM public.schema_migrations ORDER BY version")
        r = _run([MIGRATE, S["url"]])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("migrations: 0 applied, %d skipped" % len(MIGRATIONS), r.stdout)
        self.assertNotIn("warning", r.stdout + r.stderr)
        self.assertEqual(db("SELECT version, applied_at FROM public.schema_migrations ORDER BY version"), before)
        self.assertEqual([v for v, _ in before], [f.split("_")[0] for f in MIGRATIONS])

    def test_schema_migrations_readable_by_service_role_only(self):
        r = api("GET", "/schema_migrations?select=version&order=version")
        self.assertEqual(r.status, 200, r)
        self.assertEqual([x["version"] for x in r.json], [f.split("_")[0] for f in MIGRATIONS])
        assert_error(self, api("GET", "/schema_migrations", auth="anon"), 401, "42501")
        assert_error(self, api("GET", "/schema_migrations", auth=token(new_user())), 403, "42501")


# -- auth.users trigger --------------------------------------------------------------

class AuthTriggerTest(unittest.TestCase):
    def test_signup_creates_exactly_one_profile(self):
        uid = new_user(email="one@example.test", meta={"full_name": "One", "avatar_url": "http://a/1.png"})
        rows = db("SELECT email, full_name, avatar_url, is_test_user FROM public.users WHERE id = %s", (uid,))
        self.assertEqual(rows, [("one@example.test", "One", "http://a/1.png", False)])
        # The seed's test-user service then inserted the same profile again (duplicate key,
        # §7 #24): a plain insert still conflicts, an upsert that ignores duplicates does not.
        r = api("POST", "/users", {"id": uid, "email": "one@example.test"})
        assert_error(self, r, 409, "23505")
        r = api("POST", "/users?on_conflict=id", {"id": uid, "email": "x@example.test"},
                headers={"Prefer": "resolution=ignore-duplicates,return=representation"})
        self.assertEqual((r.status, r.json), (201, []))
        self.assertEqual(db("SELECT count(*), min(email) FROM public.users WHERE id = %s", (uid,)),
                         [(1, "one@example.test")])

    def test_trigger_ignores_an_existing_profile(self):
        uid = str(uuid.uuid4())
        import psycopg2
        conn = psycopg2.connect(S["url"])
        try:
            with conn, conn.cursor() as cur:
                # The profile exists before the auth user (FK checks off for the setup only).
                cur.execute("SET LOCAL session_replication_role = replica")
                cur.execute("INSERT INTO public.users (id, email) VALUES (%s, 'first@example.test')", (uid,))
                cur.execute("SET LOCAL session_replication_role = origin")
                cur.execute("INSERT INTO auth.users (id, email) VALUES (%s, 'second@example.test')", (uid,))
        finally:
            conn.close()
        self.assertEqual(db("SELECT count(*), min(email) FROM public.users WHERE id = %s", (uid,)),
                         [(1, "first@example.test")])

    def test_test_user_metadata_sets_expiry(self):
        uid = new_user(meta={"is_test_user": True, "ttl_hours": 2})
        rows = db("SELECT is_test_user, round(extract(epoch FROM expires_at - now()) / 3600) "
                  "FROM public.users WHERE id = %s", (uid,))
        self.assertEqual(rows, [(True, 2)])

    def test_auth_update_syncs_profile(self):
        uid = new_user()
        db("UPDATE auth.users SET email = 'new@example.test', raw_user_meta_data = '{\"full_name\": \"N\"}' "
           "WHERE id = %s", (uid,))
        self.assertEqual(db("SELECT email, full_name FROM public.users WHERE id = %s", (uid,)),
                         [("new@example.test", "N")])

    def test_cleanup_expired_test_users(self):
        keep = new_user(meta={"is_test_user": True})
        gone = new_user(meta={"is_test_user": True})
        db("UPDATE public.users SET expires_at = now() - interval '1 minute' WHERE id = %s", (gone,))
        assert_error(self, rpc("cleanup_expired_test_users", auth=token(keep)), 403, "42501")
        assert_error(self, rpc("cleanup_expired_test_users", auth="anon"), 401, "42501")
        r = rpc("cleanup_expired_test_users")
        self.assertEqual((r.status, r.json), (200, 1), r)
        self.assertEqual(db("SELECT id::text FROM public.users WHERE id IN (%s, %s)", (keep, gone)), [(keep,)])


# -- row-level security -------------------------------------------------------------------

class RlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.a, cls.b = new_user(), new_user()
        cls.ta, cls.tb = token(cls.a), token(cls.b)
        cls.pa = cls._project(cls.a, "a")
        cls.pb = cls._project(cls.b, "b")
        cls.task_a = make_tasks(cls.a, 2, project_id=cls.pa)
        cls.task_b = make_tasks(cls.b, 1, project_id=cls.pb)

    @staticmethod
    def _project(uid, name):
        r = api("POST", "/projects", {"user_id": uid, "repo_url": "https://github.com/o/" + name,
                                      "repo_name": name, "repo_owner": "o", "name": name},
                headers={"Prefer": "return=representation", "Accept": "application/vnd.pgrst.object+json"})
        assert r.status == 201, r
        return r.json["id"]

    def test_user_sees_only_own_rows(self):
        for table, mine in (("projects", {self.pa}), ("tasks", set(self.task_a))):
            r = api("GET", "/%s?select=id,user_id" % table, auth=self.ta)
            self.assertEqual(r.status, 200, r)
            self.assertLessEqual(mine, {x["id"] for x in r.json}, table)   # other tests may add own rows
            self.assertEqual({x["user_id"] for x in r.json}, {self.a})
        r = api("GET", "/users?select=id", auth=self.ta)
        self.assertEqual(r.json, [{"id": self.a}])
        # Filtering for another user's rows finds nothing (not an error).
        r = api("GET", "/tasks?user_id=eq." + self.b, auth=self.ta)
        self.assertEqual((r.status, r.json), (200, []))

    def test_service_role_sees_everything(self):
        r = api("GET", "/tasks?select=id&user_id=in.(%s,%s)" % (self.a, self.b))
        self.assertEqual({x["id"] for x in r.json}, set(self.task_a + self.task_b))

    def test_anon_sees_nothing_and_cannot_write(self):
        self.assertEqual(api("GET", "/tasks", auth="anon").json, [])
        r = api("POST", "/projects", {"user_id": self.a, "repo_url": "u", "repo_name": "n",
                                      "repo_owner": "o", "name": "n"}, auth="anon")
        assert_error(self, r, 401, "42501")
        self.assertEqual(r.headers.get("www-authenticate"), "Bearer")

    def test_user_cannot_insert_for_another_user(self):
        r = api("POST", "/projects", {"user_id": self.b, "repo_url": "https://github.com/o/x",
                                      "repo_name": "x", "repo_owner": "o", "name": "x"}, auth=self.ta)
        assert_error(self, r, 403, "42501")
        self.assertIn("row-level security", r.json["message"])
        # ... but may insert its own project (auth.uid() from the JWT's sub), and reads it back.
        r = api("POST", "/projects", {"user_id": self.a, "repo_url": "https://github.com/o/own",
                                      "repo_name": "own", "repo_owner": "o", "name": "own"}, auth=self.ta,
                headers={"Prefer": "return=representation"})
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.json[0]["user_id"], self.a)

    def test_tasks_are_written_by_the_backend_only(self):
        # Queued rows run: a user must not queue one past the API's validation, nor reset one.
        r = api("POST", "/tasks", {"user_id": self.a, "repo_url": "file:///etc"}, auth=self.ta)
        assert_error(self, r, 403, "42501")
        self.assertIn("permission denied", r.json["message"])
        assert_error(self, api("PATCH", "/tasks?id=eq.%d" % self.task_a[1], {"status": "pending"}, auth=self.ta),
                     403, "42501")
        assert_error(self, api("DELETE", "/tasks?id=eq.%d" % self.task_a[1], auth=self.ta), 403, "42501")
        for fn, args in (("append_chat_message", {"message": {"role": "assistant", "content": "forged"}}),
                         ("start_followup", {"message": {"role": "user", "content": "x"}}),
                         ("request_cancel_task", {})):
            r = rpc(fn, auth=self.ta, user_id=self.a, task_id=self.task_a[1], **args)
            assert_error(self, r, 403, "42501")
        self.assertEqual(db("SELECT status::text, jsonb_array_length(chat_messages) FROM tasks WHERE id = %s",
                            (self.task_a[1],)), [("pending", 1)])

    def test_user_cannot_touch_another_users_rows(self):
        r = api("PATCH", "/projects?id=eq.%d" % self.pb, {"name": "stolen"}, auth=self.ta,
                headers={"Prefer": "return=representation"})
        self.assertEqual((r.status, r.json), (200, []))
        r = api("DELETE", "/projects?id=eq.%d" % self.pb, auth=self.ta)
        self.assertEqual(r.status, 204)
        self.assertEqual(db("SELECT name FROM projects WHERE id = %s", (self.pb,)), [("b",)])
        r = api("PATCH", "/users?id=eq.%s" % self.b, {"full_name": "stolen"}, auth=self.ta,
                headers={"Prefer": "return=representation"})
        self.assertEqual((r.status, r.json), (200, []))
        # Its own rows it may change; moving one to another user violates the policy.
        r = api("PATCH", "/projects?id=eq.%d" % self.pa, {"description": "mine"}, auth=self.ta,
                headers={"Prefer": "return=representation"})
        self.assertEqual((r.status, r.json[0]["description"]), (200, "mine"))
        r = api("PATCH", "/projects?id=eq.%d" % self.pa, {"user_id": self.b}, auth=self.ta)
        assert_error(self, r, 403, "42501")

    def test_task_events_readable_by_owner_only(self):
        for tid in (self.task_a[0], self.task_b[0]):
            r = api("POST", "/task_events", [{"task_id": tid, "type": "log", "data": {"n": i}} for i in range(3)])
            self.assertEqual(r.status, 201, r)
        r = api("GET", "/task_events?select=task_id,type,data&order=id", auth=self.ta)
        self.assertEqual({x["task_id"] for x in r.json}, {self.task_a[0]})
        self.assertEqual([x["data"]["n"] for x in r.json], [0, 1, 2])
        r = api("GET", "/task_events?task_id=eq.%d" % self.task_b[0], auth=self.ta)
        self.assertEqual(r.json, [])
        assert_error(self, api("POST", "/task_events", {"task_id": self.task_a[0], "type": "x"}, auth=self.ta),
                     403, "42501")

    def test_engine_functions_need_the_service_role(self):
        r = rpc("claim_next_task", auth=self.ta, owner="h", lease_seconds=30, max_global=10, max_per_user=10)
        assert_error(self, r, 403, "42501")
        r = rpc("recover_expired_tasks", auth="anon", max_attempts=2)
        assert_error(self, r, 401, "42501")

    def test_projects_with_counts(self):
        db("UPDATE tasks SET status = 'completed' WHERE id = %s", (self.task_a[0],))
        r = api("GET", "/projects_with_counts?select=id,task_count,completed_tasks,active_tasks", auth=self.ta)
        self.assertEqual(r.json, [{"id": self.pa, "task_count": 2, "completed_tasks": 1, "active_tasks": 1}])
        r = api("GET", "/projects_with_counts?select=id&user_id=eq.%s" % self.b)
        self.assertEqual(r.json, [{"id": self.pb}])


# -- the queue ----------------------------------------------------------------------------------

class QueueTest(unittest.TestCase):
    def setUp(self):
        db("DELETE FROM public.tasks")

    def claim(self, owner="host-1", lease=60, max_global=1000, max_per_user=1000):
        r = rpc("claim_next_task", owner=owner, lease_seconds=lease, max_global=max_global,
                max_per_user=max_per_user)
        self.assertEqual(r.status, 200, r)
        self.assertIsInstance(r.json, list)
        return r.json[0] if r.json else None

    def test_claim_returns_the_oldest_task_with_a_lease(self):
        uid = new_user()
        ids = make_tasks(uid, 2)
        got = self.claim(owner="h1", lease=45)
        self.assertEqual(got, {"id": ids[0], "user_id": uid, "attempts": 1})
        row = db("SELECT status, lease_owner, round(extract(epoch FROM lease_until - now())), "
                 "started_at IS NOT NULL, heartbeat_at IS NOT NULL FROM tasks WHERE id = %s", (ids[0],))
        self.assertEqual(row[0][:2], ("running", "h1"))
        self.assertTrue(40 <= row[0][2] <= 45, row)
        self.assertEqual(row[0][3:], (True, True))

    def test_100_tasks_4_concurrent_claimers_each_claimed_once(self):
        users = [new_user() for _ in range(10)]
        ids = []
        for uid in users:
            ids += make_tasks(uid, 10)
        got = {i: [] for i in range(4)}
        errors = []

        def claimer(i):
            try:
                misses = 0
                while misses < 2:
                    r = rpc("claim_next_task", owner="host-%d" % i, lease_seconds=60, max_global=1000,
                            max_per_user=1000)
                    if r.status != 200:
                        errors.append(r)
                        return
                    if r.json:
                        got[i].append(r.json[0]["id"])
                    else:
                        misses += 1
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
        threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        claimed = [tid for lst in got.values() for tid in lst]
        self.assertEqual(len(claimed), 100)
        self.assertEqual(sorted(claimed), sorted(ids))
        self.assertTrue(sum(1 for lst in got.values() if lst) >= 2, "claims were not concurrent: %r" %
                        {k: len(v) for k, v in got.items()})
        owners = dict(db("SELECT id, lease_owner FROM tasks WHERE status = 'running'"))
        for i, lst in got.items():
            for tid in lst:
                self.assertEqual(owners[tid], "host-%d" % i)

    def test_max_global(self):
        for _ in range(5):
            make_tasks(new_user(), 1)
        claimed = [self.claim(max_global=3) for _ in range(4)]
        self.assertEqual(sum(1 for c in claimed if c), 3)
        self.assertIsNone(claimed[3])
        r = rpc("finish_task_run", task_id=claimed[0]["id"], owner="host-1", status="completed")
        self.assertEqual(r.json, True)
        self.assertIsNotNone(self.claim(max_global=3))
        self.assertIsNone(self.claim(max_global=3))

    def test_max_per_user_skips_capped_users(self):
        a, b = new_user(), new_user()
        ta = make_tasks(a, 3)
        tb = make_tasks(b, 3)
        got = []
        while True:
            c = self.claim(max_per_user=2)
            if not c:
                break
            got.append(c["id"])
        self.assertEqual(got, ta[:2] + tb[:2])

    def test_caps_hold_under_concurrency(self):
        for _ in range(12):
            make_tasks(new_user(), 2)
        results = []
        lock = threading.Lock()

        def claimer(i):
            for _ in range(6):
                r = rpc("claim_next_task", owner="c%d" % i, lease_seconds=60, max_global=5, max_per_user=1)
                with lock:
                    results.append(r.json[0]["id"] if r.status == 200 and r.json else None)
        threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(sum(1 for x in results if x), 5)
        running = db("SELECT user_id, count(*) FROM tasks WHERE status = 'running' GROUP BY user_id")
        self.assertEqual(len(running), 5)
        self.assertTrue(all(n == 1 for _, n in running))

    def test_cancel_requested_pending_tasks_are_not_claimed(self):
        uid = new_user()
        ids = make_tasks(uid, 2)
        db("UPDATE tasks SET cancel_requested = true WHERE id = %s", (ids[0],))
        self.assertEqual(self.claim()["id"], ids[1])

    def test_heartbeat(self):
        uid = new_user()
        tid = make_tasks(uid, 1)[0]
        self.claim(owner="h1", lease=5)
        r = rpc("heartbeat_task", task_id=tid, owner="h1", lease_seconds=100)
        self.assertEqual((r.status, r.json), (200, {"held": True, "cancel_requested": False}))
        left = db("SELECT extract(epoch FROM lease_until - now()) FROM tasks WHERE id = %s", (tid,))[0][0]
        self.assertGreater(left, 90)
        r = rpc("heartbeat_task", task_id=tid, owner="h2", lease_seconds=100)
        self.assertEqual(r.json, {"held": False, "cancel_requested": False})
        self.assertEqual(rpc("request_cancel_task", user_id=uid, task_id=tid).json, "cancelling")
        r = rpc("heartbeat_task", task_id=tid, owner="h1", lease_seconds=100)
        self.assertEqual(r.json, {"held": True, "cancel_requested": True})
        r = rpc("heartbeat_task", task_id=999999999, owner="h1", lease_seconds=100)
        self.assertEqual(r.json, {"held": False, "cancel_requested": False})

    def test_recover_expired(self):
        uid = new_user()
        retry, exhausted, cancelled, alive = make_tasks(uid, 4)
        for _ in range(4):
            self.claim(owner="dead-host")
        db("UPDATE tasks SET container_id = 'sbx-' || id, lease_until = now() - interval '1 second' "
           "WHERE id IN (%s, %s, %s)", (retry, exhausted, cancelled))
        db("UPDATE tasks SET attempts = 2 WHERE id = %s", (exhausted,))
        db("UPDATE tasks SET cancel_requested = true WHERE id = %s", (cancelled,))
        r = rpc("recover_expired_tasks", max_attempts=2)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(sorted(r.json, key=lambda x: x["id"]), [
            {"id": retry, "action": "requeued", "container_id": "sbx-%d" % retry},
            {"id": exhausted, "action": "failed", "container_id": "sbx-%d" % exhausted},
            {"id": cancelled, "action": "cancelled", "container_id": "sbx-%d" % cancelled}])
        rows = {r[0]: r[1:] for r in db("SELECT id, status, lease_owner, error, completed_at IS NOT NULL "
                                         "FROM tasks")}
        self.assertEqual(rows[retry], ("pending", None, None, False))
        self.assertEqual(rows[exhausted][:2], ("failed", None))
        self.assertIn("interrupted", rows[exhausted][2])
        self.assertTrue(rows[exhausted][3])
        self.assertEqual(rows[cancelled], ("cancelled", None, "Cancelled", True))
        self.assertEqual(rows[alive][:2], ("running", "dead-host"))
        self.assertEqual(rpc("recover_expired_tasks", max_attempts=2).json, [])
        # The re-queued task is claimed again, attempt 2; the old host's lease is gone.
        self.assertEqual(self.claim(owner="new-host"), {"id": retry, "user_id": uid, "attempts": 2})
        self.assertEqual(rpc("heartbeat_task", task_id=retry, owner="dead-host", lease_seconds=9).json["held"],
                         False)

    def test_finish_task_run(self):
        uid = new_user()
        tid = make_tasks(uid, 1)[0]
        self.claim(owner="h1")
        self.assertEqual(rpc("finish_task_run", task_id=tid, owner="other", status="completed").json, False)
        assert_error(self, rpc("finish_task_run", task_id=tid, owner="h1", status="running"), 400, "P0001")
        r = rpc("finish_task_run", task_id=tid, owner="h1", status="completed", commit_hash="abc123",
                git_diff="diff", changed_files=["a.txt", "b/"], execution_metadata={"cost": 0.1},
                assistant_message={"role": "assistant", "content": "done"})
        self.assertEqual((r.status, r.json), (200, True))
        row = api("GET", "/tasks?id=eq.%d" % tid, headers={"Accept": "application/vnd.pgrst.object+json"}).json
        self.assertEqual((row["status"], row["run_count"], row["commit_hash"], row["git_diff"]),
                         ("completed", 1, "abc123", "diff"))
        self.assertEqual(row["changed_files"], ["a.txt", "b/"])
        self.assertEqual(row["execution_metadata"], {"cost": 0.1})
        self.assertEqual(row["chat_messages"][-1], {"role": "assistant", "content": "done"})
        self.assertEqual(len(row["chat_messages"]), 2)
        self.assertIsNone(row["lease_owner"])
        self.assertIsNone(row["error"])
        self.assertIsNotNone(row["completed_at"])
        # Finished: a second finish (or a late one from a host that lost the lease) does nothing.
        self.assertEqual(rpc("finish_task_run", task_id=tid, owner="h1", status="failed", error="late").json, False)

    def test_request_cancel(self):
        uid, other = new_user(), new_user()
        pending, running, done = make_tasks(uid, 3)
        self.claim()
        self.claim()
        rpc("finish_task_run", task_id=running, owner="host-1", status="completed")  # the 2nd claim is `running`
        db("UPDATE tasks SET status = 'pending', lease_owner = NULL WHERE id = %s", (pending,))
        db("UPDATE tasks SET status = 'running', lease_owner = 'host-1' WHERE id = %s", (running,))
        db("UPDATE tasks SET status = 'completed' WHERE id = %s", (done,))
        self.assertEqual(rpc("request_cancel_task", user_id=uid, task_id=pending).json, "cancelled")
        self.assertEqual(db("SELECT status, error FROM tasks WHERE id = %s", (pending,)), [("cancelled", "Cancelled")])
        self.assertEqual(rpc("request_cancel_task", user_id=uid, task_id=running).json, "cancelling")
        self.assertEqual(db("SELECT status, cancel_requested FROM tasks WHERE id = %s", (running,)),
                         [("running", True)])
        self.assertEqual(rpc("request_cancel_task", user_id=uid, task_id=done).json, "finished")
        self.assertIsNone(rpc("request_cancel_task", user_id=other, task_id=running).json)

    def test_start_followup(self):
        uid = new_user()
        tid = make_tasks(uid, 1)[0]
        msg = {"role": "user", "content": "again", "timestamp": "2026-11-27T09:30:12.345Z"}
        self.assertEqual(rpc("start_followup", user_id=uid, task_id=tid, message=msg).json, [])  # pending: busy
        self.claim()
        self.assertEqual(rpc("start_followup", user_id=uid, task_id=tid, message=msg).json, [])  # running: busy
        rpc("finish_task_run", task_id=tid, owner="host-1", status="failed", error="boom")
        self.assertEqual(rpc("start_followup", user_id=new_user(), task_id=tid, message=msg).json, [])
        r = rpc("start_followup", user_id=uid, task_id=tid, message=msg)
        self.assertEqual(r.status, 200, r)
        [row] = r.json
        self.assertEqual((row["id"], row["status"], row["attempts"], row["error"], row["completed_at"]),
                         (tid, "pending", 0, None, None))
        self.assertEqual(row["chat_messages"][-1], msg)
        self.assertEqual(len(row["chat_messages"]), 2)
        self.assertEqual(self.claim()["attempts"], 1)

    def test_concurrent_chat_appends_lose_nothing(self):
        uid = new_user()
        tid = make_tasks(uid, 1)[0]
        statuses = []

        def append(i):
            statuses.append(rpc("append_chat_message", user_id=uid, task_id=tid,
                                message={"role": "user", "content": "m%d" % i}).status)
        threads = [threading.Thread(target=append, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(statuses, [200] * 20)
        msgs = api("GET", "/tasks?id=eq.%d&select=chat_messages" % tid).json[0]["chat_messages"]
        self.assertEqual(len(msgs), 21)
        self.assertEqual({m["content"] for m in msgs[1:]}, {"m%d" % i for i in range(20)})

    def test_idempotent_submission(self):
        uid = new_user()
        body = {"user_id": uid, "repo_url": "u", "idempotency_key": "k-1", "chat_messages": []}
        prefer = {"Prefer": "return=representation,resolution=ignore-duplicates"}
        r1 = api("POST", "/tasks?on_conflict=user_id,idempotency_key&select=id", body, headers=prefer)
        r2 = api("POST", "/tasks?on_conflict=user_id,idempotency_key&select=id", body, headers=prefer)
        self.assertEqual(r1.status, 201, r1)
        self.assertEqual(len(r1.json), 1)
        self.assertEqual((r2.status, r2.json), (201, []))
        assert_error(self, api("POST", "/tasks", body), 409, "23505")
        # Tasks without a key never conflict; the same key for another user is fine.
        self.assertEqual(api("POST", "/tasks", [{"user_id": uid, "repo_url": "u"}] * 2).status, 201)
        self.assertEqual(api("POST", "/tasks", dict(body, user_id=new_user())).status, 201)
        self.assertEqual(db("SELECT count(*) FROM tasks WHERE user_id = %s", (uid,)), [(3,)])


# -- PostgREST wire semantics ------------------------------------------------------------------

class RestTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.uid = new_user()
        rows = []
        for i in range(42):
            rows.append({"user_id": cls.uid, "repo_url": "https://github.com/o/r%d" % (i % 3),
                         "agent": "codex" if i % 2 else "claude", "target_branch": "feat-%d" % i,
                         "pr_number": i if i % 4 == 0 else None,
                         "execution_metadata": {"legacy_id": "L%d" % i, "n": i}})
        r = api("POST", "/tasks?select=id", rows, headers={"Prefer": "return=representation"})
        assert r.status == 201, r
        cls.ids = [x["id"] for x in r.json]
        cls.mine = "user_id=eq." + cls.uid

    def get(self, query, **kw):
        return api("GET", "/tasks?" + self.mine + "&" + query, **kw)

    def test_count_exact_and_content_range(self):
        r = self.get("select=id&order=id&limit=10", headers={"Prefer": "count=exact"})
        self.assertEqual((r.status, r.headers["content-range"]), (206, "0-9/42"))
        self.assertEqual([x["id"] for x in r.json], self.ids[:10])
        r = self.get("select=id&order=id&limit=10&offset=40", headers={"Prefer": "count=exact"})
        self.assertEqual((r.status, r.headers["content-range"], len(r.json)), (206, "40-41/42", 2))
        r = self.get("select=id", headers={"Prefer": "count=exact"})
        self.assertEqual((r.status, r.headers["content-range"]), (200, "0-41/42"))
        r = self.get("select=id&limit=10")
        self.assertEqual((r.status, r.headers["content-range"]), (200, "0-9/*"))
        r = self.get("select=id&agent=eq.nobody", headers={"Prefer": "count=exact"})
        self.assertEqual((r.status, r.headers["content-range"], r.json), (200, "*/0", []))
        r = self.get("select=id&offset=50&limit=5", headers={"Prefer": "count=exact"})
        assert_error(self, r, 416, "PGRST103")
        r = self.get("select=id&order=id", headers={"Range": "5-9", "Prefer": "count=exact"})
        self.assertEqual((r.status, r.headers["content-range"]), (206, "5-9/42"))
        r = api("HEAD", "/tasks?" + self.mine, headers={"Prefer": "count=exact"})
        self.assertEqual((r.status, r.headers["content-range"], r.body), (200, "0-41/42", ""))

    def test_filters(self):
        ids = self.ids

        def got(q):
            r = self.get("select=id&order=id&" + q)
            self.assertEqual(r.status, 200, (q, r))
            return [x["id"] for x in r.json]
        self.assertEqual(got("id=eq.%d" % ids[3]), [ids[3]])
        self.assertEqual(len(got("id=neq.%d" % ids[3])), 41)
        self.assertEqual(got("id=gt.%d" % ids[39]), ids[40:])
        self.assertEqual(got("id=gte.%d" % ids[40]), ids[40:])
        self.assertEqual(got("id=lt.%d" % ids[2]), ids[:2])
        self.assertEqual(got("id=lte.%d" % ids[1]), ids[:2])
        self.assertEqual(got("id=in.(%d,%d,%d)" % (ids[0], ids[5], ids[9])), [ids[0], ids[5], ids[9]])
        self.assertEqual(got("id=not.in.(%s)" % ",".join(map(str, ids[2:]))), ids[:2])
        self.assertEqual(got("id=in.()"), [])
        self.assertEqual(got("pr_number=not.is.null"), [ids[i] for i in range(0, 42, 4)])
        self.assertEqual(len(got("pr_number=is.null")), 42 - 11)
        self.assertEqual(got("target_branch=like.feat-4*"), [ids[4], ids[40], ids[41]])
        self.assertEqual(got("target_branch=ilike.FEAT-1"), [ids[1]])
        self.assertEqual(got("execution_metadata->>legacy_id=eq.L7"), [ids[7]])
        self.assertEqual(got("or=(id.eq.%d,and(agent.eq.codex,id.lt.%d))" % (ids[10], ids[4])),
                         [ids[1], ids[3], ids[10]])
        self.assertEqual(got("repo_url=eq." + urllib.parse.quote("https://github.com/o/r1") + "&limit=2"),
                         [ids[1], ids[4]])
        self.assertEqual(got("agent=in.(%22codex%22,zzz)&limit=1"), [ids[1]])

    def test_select_and_order(self):
        r = self.get("select=id,branch:target_branch,execution_metadata->>legacy_id,pr_number"
                     "&order=pr_number.desc.nullslast,id.asc&limit=12")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(set(r.json[0]), {"id", "branch", "legacy_id", "pr_number"})
        self.assertEqual([x["pr_number"] for x in r.json], [40, 36, 32, 28, 24, 20, 16, 12, 8, 4, 0, None])
        self.assertEqual(r.json[0]["legacy_id"], "L40")
        self.assertEqual(r.json[-1]["id"], self.ids[1])
        r = self.get("select=pr_number&order=pr_number.asc.nullsfirst&limit=1")
        self.assertEqual(r.json, [{"pr_number": None}])
        r = self.get("select=*&limit=1")
        self.assertIn("chat_messages", r.json[0])
        self.assertIn("lease_until", r.json[0])
        assert_error(self, self.get("order=id.sideways"), 400, "PGRST100")
        assert_error(self, self.get("id=zz.1"), 400, "PGRST100")

    def test_singular_object(self):
        acc = {"Accept": "application/vnd.pgrst.object+json"}
        r = self.get("id=eq.%d&select=id,agent" % self.ids[0], headers=acc)
        self.assertEqual((r.status, r.json), (200, {"id": self.ids[0], "agent": "claude"}))
        self.assertTrue(r.headers["content-type"].startswith("application/vnd.pgrst.object+json"))
        assert_error(self, self.get("id=eq.-1", headers=acc), 406, "PGRST116")
        assert_error(self, self.get("select=id", headers=acc), 406, "PGRST116")
        # A write that would touch several rows is rolled back.
        r = api("PATCH", "/tasks?%s&agent=eq.codex" % self.mine, {"error": "x"},
                headers=dict(acc, Prefer="return=representation"))
        assert_error(self, r, 406, "PGRST116")
        self.assertEqual(db("SELECT count(*) FROM tasks WHERE user_id = %s AND error = 'x'", (self.uid,)), [(0,)])

    def test_insert_update_delete_shapes(self):
        uid = new_user()
        r = api("POST", "/projects", {"user_id": uid, "repo_url": "https://github.com/o/p", "repo_name": "p",
                                      "repo_owner": "o", "name": "p", "settings": {"a": [1, 2]}})
        self.assertEqual((r.status, r.body), (201, ""))   # return=minimal is the default
        r = api("GET", "/projects?user_id=eq.%s" % uid, headers={"Accept": "application/vnd.pgrst.object+json"})
        proj = r.json
        self.assertEqual((proj["settings"], proj["is_active"], proj["description"]), ({"a": [1, 2]}, True, None))
        time.sleep(0.01)
        r = api("PATCH", "/projects?id=eq.%d" % proj["id"], {"name": "q", "is_active": False},
                headers={"Prefer": "return=representation"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json[0]["name"], r.json[0]["is_active"]), ("q", False))
        self.assertGreater(r.json[0]["updated_at"], proj["updated_at"])   # the updated_at trigger
        self.assertEqual(r.json[0]["created_at"], proj["created_at"])
        r = api("PATCH", "/projects?id=eq.%d" % proj["id"], {"name": "r"})
        self.assertEqual((r.status, r.body), (204, ""))
        # Upserts on the (user_id, repo_url) constraint.
        up = {"user_id": uid, "repo_url": "https://github.com/o/p", "repo_name": "p", "repo_owner": "o",
              "name": "merged"}
        r = api("POST", "/projects?on_conflict=user_id,repo_url", up,
                headers={"Prefer": "resolution=merge-duplicates,return=representation"})
        self.assertEqual((r.status, r.json[0]["id"], r.json[0]["name"]), (201, proj["id"], "merged"))
        self.assertIn("resolution=merge-duplicates", r.headers.get("preference-applied", ""))
        r = api("POST", "/projects?on_conflict=user_id,repo_url", dict(up, name="ignored"),
                headers={"Prefer": "resolution=ignore-duplicates,return=representation"})
        self.assertEqual((r.status, r.json), (201, []))
        assert_error(self, api("POST", "/projects", [up, {"user_id": uid}]), 400, "PGRST102")
        r = api("DELETE", "/projects?id=eq.%d" % proj["id"], headers={"Prefer": "return=representation"})
        self.assertEqual((r.status, [x["name"] for x in r.json]), (200, ["merged"]))
        r = api("DELETE", "/projects?id=eq.%d" % proj["id"])
        self.assertEqual(r.status, 204)

    def test_rpc_over_get_runs_read_only(self):
        # claim_next_task locks a row (SELECT ... FOR UPDATE): not allowed in a read-only transaction.
        r = api("GET", "/rpc/claim_next_task?owner=h&lease_seconds=1&max_global=100000&max_per_user=100000")
        assert_error(self, r, 405, "25006")


# -- errors ---------------------------------------------------------------------------------------

class ErrorTest(unittest.TestCase):
    def test_sqlstate_to_http_status(self):
        uid = new_user()
        p = {"user_id": uid, "repo_url": "https://github.com/o/dup", "repo_name": "d", "repo_owner": "o", "name": "d"}
        self.assertEqual(api("POST", "/projects", p).status, 201)
        assert_error(self, api("POST", "/projects", p), 409, "23505")
        r = api("POST", "/tasks", {"user_id": uid, "project_id": 987654321})
        assert_error(self, r, 409, "23503")
        self.assertIn("project_id", r.json["details"])
        assert_error(self, api("POST", "/tasks", {"user_id": str(uuid.uuid4())}), 409, "23503")
        assert_error(self, api("GET", "/no_such_table"), 404, "42P01")
        assert_error(self, api("GET", "/tasks?no_such_column=eq.1"), 400, "42703")
        assert_error(self, api("GET", "/tasks?select=nope"), 400, "42703")
        assert_error(self, api("GET", "/tasks?id=eq.abc"), 400, "22P02")
        assert_error(self, api("POST", "/tasks", {"user_id": uid, "status": "bogus"}), 400, "22P02")
        assert_error(self, rpc("finish_task_run", task_id=1, owner="h", status="nope"), 400, "P0001")
        assert_error(self, rpc("claim_next_task", owner="h"), 404, "PGRST202")
        assert_error(self, rpc("no_such_function", a=1), 404, "PGRST202")
        assert_error(self, rpc("claim_next_task", owner="h", lease_seconds="x", max_global=1, max_per_user=1),
                     400, "22P02")
        assert_error(self, api("POST", "/tasks", raw="{not json"), 400, "PGRST102")
        assert_error(self, api("GET", "/tasks", auth="anon", headers={"Accept": "text/csv"}), 406, "PGRST107")

    def test_authentication(self):
        r = api("GET", "/tasks", auth=None)
        self.assertEqual((r.status, r.json["message"]), (401, "No API key found in request"))
        r = api("GET", "/tasks", auth=None, headers={"apikey": S["pg"].supabase_keys("other-secret")["anon"]})
        self.assertEqual((r.status, r.json["message"]), (401, "Invalid API key"))
        uid = new_user()
        bad = S["pg"].user_jwt(uid, "wrong-secret-wrong-secret-wrong-secret")
        assert_error(self, api("GET", "/tasks", auth=bad), 401, "PGRST301")
        assert_error(self, api("GET", "/tasks", auth=token(uid, ttl=-120)), 401, "PGRST303")
        assert_error(self, api("GET", "/tasks", auth="not-a-jwt"), 401, "PGRST301")
        # A token within the 30 s clock skew still passes.
        self.assertEqual(api("GET", "/tasks", auth=token(uid, ttl=-10)).status, 200)
        # The role claim selects the database role, among those granted to authenticator only.
        r = api("GET", "/tasks", auth=token(uid, role="postgres"))
        assert_error(self, r, 403, "42501")
        self.assertIn("postgres", r.json["message"])
        assert_error(self, api("GET", "/tasks", auth=token(uid, role="no_such_role")), 400, "22023")
        # An unsigned token (alg none) is never accepted.
        none = ".".join([S["pg"]._b64url(b'{"alg":"none"}'),
                         S["pg"]._b64url(json.dumps({"sub": uid, "role": "service_role"}).encode()), ""])
        assert_error(self, api("GET", "/tasks", auth=none), 401, "PGRST301")


# -- faults and outages ------------------------------------------------------------------------------

class FaultTest(unittest.TestCase):
    def tearDown(self):
        control("config", {"fail_next": 0, "fail_rate": 0, "fail_mode": "status", "delay_ms": 0})
        control("up")

    def test_fail_next_answers_503(self):
        control("config", {"fail_next": 2})
        self.assertEqual([api("GET", "/tasks?limit=1").status for _ in range(3)], [503, 503, 200])

    def test_fail_next_drop_closes_the_connection(self):
        control("config", {"fail_next": 1, "fail_mode": "drop"})
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionResetError, http.client.BadStatusLine)):
            api("GET", "/tasks?limit=1")
        self.assertEqual(api("GET", "/tasks?limit=1").status, 200)

    def test_delay(self):
        control("config", {"delay_ms": 300})
        t0 = time.monotonic()
        self.assertEqual(api("GET", "/tasks?limit=1").status, 200)
        self.assertGreaterEqual(time.monotonic() - t0, 0.3)

    def test_database_down_and_back(self):
        self.assertEqual(control("down"), (200, {"down": True}))
        r = api("GET", "/tasks?limit=1")
        assert_error(self, r, 503, "PGRST000")
        assert_error(self, rpc("recover_expired_tasks", max_attempts=2), 503, "PGRST000")
        control("up")
        self.assertEqual(api("GET", "/tasks?limit=1").status, 200)

    def test_real_postgres_restart(self):
        self.assertEqual(api("GET", "/tasks?limit=1").status, 200)   # the pool holds connections now
        r = _run([PG_SH, "halt", S["dir"]])
        self.assertEqual(r.returncode, 0, r.stderr)
        try:
            assert_error(self, api("GET", "/tasks?limit=1"), 503, "PGRST000")
        finally:
            r = _run([PG_SH, "start", S["dir"]])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout.strip(), S["url"])
        # Stale pooled connections are replaced; the first request after the restart works.
        self.assertEqual(api("GET", "/tasks?limit=1").status, 200)
        self.assertEqual(rpc("recover_expired_tasks", max_attempts=2).status, 200)

    def test_every_request_is_logged_with_its_role(self):
        uid = new_user()
        api("GET", "/tasks?limit=1&select=id", auth=token(uid))
        api("GET", "/tasks?limit=1&select=id", auth="anon")
        api("GET", "/tasks?limit=1&select=id")
        entries = [e for e in S["server"].requests if e["query"] == "limit=1&select=id"][-3:]
        self.assertEqual([(e["method"], e["path"], e["role"], e["status"]) for e in entries],
                         [("GET", "/rest/v1/tasks", "authenticated", 200), ("GET", "/rest/v1/tasks", "anon", 200),
                          ("GET", "/rest/v1/tasks", "service_role", 200)])
        with open(S["log"]) as f:
            logged = [json.loads(line) for line in f]
        self.assertTrue(any(e["role"] == "authenticated" and e["query"] == "limit=1&select=id" for e in logged))
        self.assertFalse(any("authorization" in e["headers"] or "apikey" in e["headers"] for e in logged))


class CliTest(unittest.TestCase):
    def test_standalone_double(self):
        log = os.path.join(S["dir"], "cli.log")
        proc = subprocess.Popen(["/usr/bin/python3", DOUBLE, "--port", "0", "--db", S["url"], "--jwt-secret", SECRET,
                                 "--log", log], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = proc.stdout.readline().split()
            self.assertEqual(first[:3], ["postgrest", "listening", "on"], first)
            keys = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(2))
            self.assertEqual(keys["service_role_key"], S["keys"]["service_role"])
            base = urllib.parse.urlsplit(first[3])
            conn = http.client.HTTPConnection(base.hostname, base.port, timeout=10)
            conn.request("POST", base.path + "/rpc/recover_expired_tasks", body='{"max_attempts": 3}',
                         headers={"apikey": keys["service_role_key"], "Content-Type": "application/json"})
            r = conn.getresponse()
            self.assertEqual(r.status, 200)
            self.assertIsInstance(json.loads(r.read()), list)
            conn.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                raise
            proc.stdout.close()
            proc.stderr.close()
        with open(log) as f:
            entry = json.loads(f.readline())
        self.assertEqual((entry["method"], entry["path"], entry["role"], entry["status"]),
                         ("POST", "/rest/v1/rpc/recover_expired_tasks", "service_role", 200))


if __name__ == "__main__":
    unittest.main()
