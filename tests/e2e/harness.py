"""End-to-end harness: starts the real bin/aicode on a free port with a temporary
data directory and drives it over HTTP. Used by every tests/e2e/test_*.py.

    with Server(env={"RATE_LIMIT_PER_MINUTE": "5"}) as srv:
        tok = srv.token(USER_A)
        r = srv.request("GET", "/api/projects", token=tok)
        assert r.status == 200 and r.json["projects"] == []

The server's log (LOG_FILE) is kept so tests can grep it (srv.log_text()).
"""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.join(ROOT, "bin", "aicode")


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
                 start=True):
        self.port = free_port()
        self.tmp = tempfile.mkdtemp(prefix="aicode-e2e-")
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

    def log_text(self):
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
