"""End-to-end harness: starts the real bin/aicode on a free port with a temporary
data directory and drives it over HTTP. Used by every tests/e2e/test_*.py.

    with Server(env={"RATE_LIMIT_PER_MINUTE": "5"}) as srv:
        tok = srv.token(USER_A)
        r = srv.request("GET", "/api/projects", token=tok)
        assert r.status == 200 and r.json["projects"] == []

The server's log (LOG_FILE) is kept so tests can grep it (srv.log_text()).

Store: AICODE_TEST_STORE=supabase runs every Server on the Supabase store: one throwaway
PostgreSQL 15 (tools/pg.sh) with db/supabase migrated and one PostgREST double
(tests/fakes/postgrest.py) per test process, started on first use and stopped at exit.
Server() then sets SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY, SUPABASE_JWT_SECRET (the
double's, so Supabase-token exchange works) and AICODE_STORE=supabase, unless the test's
own env sets SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY or AICODE_STORE (it then gets what it
asked for). A fresh Server (no data_dir given) while no other Supabase-mode Server is
alive starts on an empty database, as a fresh SQLite file would. Store-neutral helpers:
    srv.sql("SELECT ... WHERE id = ?", (x,))   rows as dicts, on whichever store is active
    srv.sign_up(user_id, email)                the Supabase Auth user (no-op with SQLite)
    with srv.store_outage(): ...               the database unusable meanwhile
    srv.db_dump()                              everything the database holds, as text
STORE is "sqlite" or "supabase"; @sqlite_only leaves a test (or class) out in Supabase mode,
for tests about the SQLite file itself (the Supabase mode has its own equivalent).
"""
import atexit
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.request
import uuid

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.join(ROOT, "bin", "aicode")
PG_SH = os.path.join(ROOT, "tools", "pg.sh")
MIGRATE_PG = os.path.join(ROOT, "tools", "migrate_pg.sh")
POSTGREST = os.path.join(ROOT, "tests", "fakes", "postgrest.py")

STORE = (os.environ.get("AICODE_TEST_STORE") or "sqlite").strip().lower()
if STORE not in ("sqlite", "supabase"):
    raise RuntimeError("AICODE_TEST_STORE must be sqlite or supabase, not %r" % STORE)


def sqlite_only(obj):
    """Decorator: the test (or class) exists only in SQLite mode. For tests about the SQLite
    file itself; the Supabase mode has its own equivalent (tests/e2e/test_supabase_*.py)."""
    return obj if STORE == "sqlite" else None


class SupabaseStack:
    """A throwaway PostgreSQL 15 (tools/pg.sh) with db/supabase migrated (unless
    migrate=False) and a PostgREST double (tests/fakes/postgrest.py) in a subprocess.

        stack = SupabaseStack().start()
        stack.url, stack.database_url, stack.service_key, stack.jwt_secret
        stack.env()                  the Server environment for the Supabase store
        stack.control("down")        POST /_control/down (also "up", "config", "reset")
        stack.auth_user(uid, email)  a Supabase Auth user (the trigger makes public.users)
        stack.sql(query, params)     rows as dicts (psycopg2, autocommit)
        stack.stop()
    """

    JWT_SECRET = "e2e-postgrest-double-jwt-secret-0123456789abcdef"

    def __init__(self, migrate=True, pool_size=20, database_url=None):
        """database_url: serve that (existing) database instead of starting a cluster."""
        self.migrate = migrate
        self.pool_size = pool_size
        self.own_cluster = database_url is None
        self.dir = None
        self.proc = None
        self.database_url = database_url
        self.url = None
        self.service_key = None
        self.jwt_secret = self.JWT_SECRET
        self._conn = None

    def start(self, timeout=60):
        self.dir = "/tmp/aicode-e2e-pg-%d-%s" % (os.getpid(), uuid.uuid4().hex[:8])
        if self.own_cluster:
            r = subprocess.run([PG_SH, "start", self.dir], capture_output=True, text=True, timeout=600)
            if r.returncode != 0:
                raise RuntimeError("tools/pg.sh start failed: %s %s" % (r.stdout, r.stderr))
            self.database_url = r.stdout.strip().splitlines()[-1]
        else:
            os.makedirs(self.dir)
        try:
            if self.migrate:
                m = subprocess.run([MIGRATE_PG, self.database_url], capture_output=True, text=True, timeout=120)
                if m.returncode != 0:
                    raise RuntimeError("tools/migrate_pg.sh failed: %s %s" % (m.stdout, m.stderr))
            out = os.path.join(self.dir, "postgrest.out")
            with open(out, "w") as o, open(os.path.join(self.dir, "postgrest.err"), "w") as e:
                # The double's CLI, with TCP_NODELAY on its sockets: it writes the headers
                # and the body of an answer separately, and Nagle's algorithm then holds the
                # body until the client's delayed ACK (40 ms per request). PostgREST itself
                # answers in one write.
                launcher = ("import runpy, socketserver, sys; "
                            "socketserver.StreamRequestHandler.disable_nagle_algorithm = True; "
                            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
                self.proc = subprocess.Popen(
                    ["/usr/bin/python3", "-c", launcher, POSTGREST, "--port", "0", "--db", self.database_url,
                     "--jwt-secret", self.jwt_secret, "--pool-size", str(self.pool_size)],
                    stdout=o, stderr=e, stdin=subprocess.DEVNULL)
            deadline = time.time() + timeout
            while time.time() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError("postgrest double exited: %s" % self.stderr_text())
                with open(out) as f:
                    lines = f.read().splitlines()
                keys = dict(l.split("=", 1) for l in lines[1:] if "=" in l)
                if lines and "service_role_key" in keys:
                    self.url = lines[0].split()[-1].rsplit("/rest/v1", 1)[0]
                    self.service_key = keys["service_role_key"]
                    return self
                time.sleep(0.05)
            raise RuntimeError("postgrest double did not start")
        except BaseException:
            self.stop()
            raise

    def stderr_text(self):
        try:
            with open(os.path.join(self.dir, "postgrest.err"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def env(self):
        return {"SUPABASE_URL": self.url, "SUPABASE_SERVICE_ROLE_KEY": self.service_key,
                "SUPABASE_JWT_SECRET": self.jwt_secret, "AICODE_STORE": "supabase"}

    def control(self, name, body=None, timeout=10):
        req = urllib.request.Request(self.url + "/_control/" + name, method="POST",
                                     data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def auth_user(self, user_id, email=None):
        """Signs the user up (auth.users; public.users follows by trigger). Idempotent."""
        body = {"id": user_id}
        if email:
            body["email"] = email
        status, res = self.control("auth_users", body)
        if status not in (201, 409):
            raise RuntimeError("cannot create the auth user %s: %s %s" % (user_id, status, res))

    def connection(self):
        import psycopg2
        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(self.database_url, connect_timeout=5)
            self._conn.autocommit = True
        return self._conn

    def sql(self, query, params=None):
        """Runs SQL (several statements allowed without params; `?` placeholders with params)."""
        import psycopg2
        import psycopg2.extras
        if params is not None:
            query = query.replace("?", "%s")
        for attempt in (1, 2):
            conn = self.connection()
            try:
                with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                    cur.execute(query, params)
                    return [dict(r) for r in cur.fetchall()] if cur.description else []
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                conn.close()  # a connection the database dropped: once more on a new one
                if attempt == 2:
                    raise

    def reset(self):
        """An empty database (ids start at 1 again), as a fresh SQLite file."""
        self.sql("TRUNCATE public.task_events, public.tasks, public.projects, public.users, auth.users, "
                 "public.rate_limits RESTART IDENTITY CASCADE")

    def dump(self):
        r = subprocess.run(["/usr/lib/postgresql/15/bin/pg_dump", "--data-only", "--no-owner", self.database_url],
                           capture_output=True, timeout=60)
        if r.returncode != 0:
            raise AssertionError("pg_dump failed: %s" % r.stderr.decode(errors="replace"))
        return r.stdout.decode("utf-8", errors="replace")

    def stop(self):
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.dir:
            if self.own_cluster:
                subprocess.run([PG_SH, "stop", self.dir], capture_output=True, timeout=120)
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


_supabase = None


def supabase():
    """The test process's Supabase stack (started on first use, stopped at exit)."""
    global _supabase
    if _supabase is None:
        stack = SupabaseStack()
        stack.start()
        atexit.register(stack.stop)
        _supabase = stack
    return _supabase


_live_supabase_servers = set()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_user():
    return str(uuid.uuid4())


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # dict with lower-case names
        self.body = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    def __repr__(self):
        return "<Response %d %r>" % (self.status, self.body[:200])


class Server:
    """A running bin/aicode serve. Environment is minimal and explicit."""

    def __init__(self, env=None, workers=1, data_dir=None, scripts_dir=None, lualib_dir=None,
                 start=True, stack=None):
        """stack: a SupabaseStack of the test's own: the server uses it (whatever STORE is)."""
        self.port = free_port()
        self.tmp = tempfile.mkdtemp(prefix="aicode-e2e-")
        # The sandbox runs as an unprivileged user that must traverse to its workspace
        # under the data dir (as in any real deployment: the data dir's parents are).
        os.chmod(self.tmp, 0o711)
        self.data_dir = data_dir or os.path.join(self.tmp, "data")
        self.log_path = os.path.join(self.tmp, "server.log")
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.tmp,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WORKERS": str(workers),
            "AICODE_DATA_DIR": self.data_dir,
            "AICODE_SCRIPTS_DIR": scripts_dir or os.path.join(ROOT, "scripts"),
            "AICODE_LUALIB_DIR": lualib_dir or os.path.join(ROOT, "lualib"),
            "AICODE_DB_DIR": os.path.join(ROOT, "db"),
            "AICODE_ENV_FILE": os.path.join(self.tmp, "none.env"),
            "LOG_FILE": self.log_path,
        }
        self.store = "sqlite"
        self.stack = None
        if stack is not None:
            self.store = "supabase"
            self.stack = stack
            self.env.update(stack.env())
        elif STORE == "supabase" and not ({"SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "AICODE_STORE"}
                                          & set(env or {})):
            self.store = "supabase"
            self.stack = supabase()
            self.env.update(self.stack.env())
            if data_dir is None and not _live_supabase_servers:
                self.stack.reset()
            _live_supabase_servers.add(id(self))
        if env:
            self.env.update(env)
        self.proc = None
        if start:
            self.start()

    # -- lifecycle -------------------------------------------------------
    def start(self, timeout=10):
        self.proc = subprocess.Popen([BIN, "serve"], cwd=ROOT, env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited with %s: %s" % (
                    self.proc.returncode, self.proc.stderr.read().decode(errors="replace")))
            try:
                if self.request("GET", "/ping").status == 200:
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def close(self):
        self.stop()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        _live_supabase_servers.discard(id(self))
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- helpers ---------------------------------------------------------
    def cli(self, *args, env=None):
        e = dict(self.env)
        if env:
            e.update(env)
        return subprocess.run([BIN] + list(args), cwd=ROOT, env=e, capture_output=True, text=True,
                              timeout=30)

    def tokens(self, user_id):
        self.sign_up(user_id)
        r = self.cli("token", "--user", user_id)
        if r.returncode != 0:
            raise RuntimeError("aicode token failed: " + r.stderr)
        return json.loads(r.stdout)

    def token(self, user_id):
        return self.tokens(user_id)["access_token"]

    def request(self, method, path, body=None, token=None, headers=None, raw=None, timeout=30):
        """body: JSON-encoded when given; raw: bytes sent as is (no content-type added)."""
        h = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        if raw is not None:
            data = raw if isinstance(raw, bytes) else raw.encode()
        if token:
            h["Authorization"] = "Bearer " + token
        if headers:
            h.update(headers)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=data, headers=h)
            resp = conn.getresponse()
            payload = resp.read().decode("utf-8", errors="replace")
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload)
        finally:
            conn.close()

    # -- the store ---------------------------------------------------------
    def sign_up(self, user_id, email=None):
        """The user's Supabase Auth account (public.users references auth.users); with
        SQLite there is none to make."""
        if self.store == "supabase":
            self.stack.auth_user(user_id, email)

    def sql(self, query, params=None):
        """Runs SQL on the active store; rows as dicts. `?` placeholders with params;
        several statements only without params."""
        if self.store == "supabase":
            return self.stack.sql(query, params)
        con = sqlite3.connect(os.path.join(self.data_dir, "aicode.db"), timeout=5, isolation_level=None)
        try:
            con.row_factory = sqlite3.Row
            if params is None and sqlite3.complete_statement(query) and query.strip().rstrip(";").count(";"):
                con.executescript(query)
                return []
            cur = con.execute(query, params or ())
            return [dict(r) for r in cur.fetchall()] if cur.description else []
        finally:
            con.close()

    def db_dump(self):
        """Everything the database holds, as text (sqlite3 .dump / pg_dump --data-only)."""
        if self.store == "supabase":
            return self.stack.dump()
        r = subprocess.run(["sqlite3", os.path.join(self.data_dir, "aicode.db"), ".dump"], capture_output=True,
                           timeout=30)
        if r.returncode != 0:
            raise AssertionError("sqlite3 .dump failed: %s" % r.stderr.decode(errors="replace"))
        return r.stdout.decode("utf-8", errors="replace")

    @contextlib.contextmanager
    def store_outage(self):
        """The database unusable while the block runs: SQLite's write lock held by another
        connection, or the Supabase double's /_control/down."""
        if self.store == "supabase":
            self.stack.control("down")
            try:
                yield
            finally:
                self.stack.control("up")
            return
        db = sqlite3.connect(os.path.join(self.data_dir, "aicode.db"), timeout=5, isolation_level=None)
        try:
            db.execute("BEGIN EXCLUSIVE")
            yield
        finally:
            db.execute("ROLLBACK")
            db.close()

    def log_text(self):
        # Access-log lines are written at the end of the event-loop iteration that
        # answered the request (host/src/log.c batching), microseconds after the
        # response: give a line that is due a moment to land.
        time.sleep(0.02)
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_lines(self):
        out = []
        for line in self.log_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"unparsed": line})
        return out
