"""What the fake upstream services share (model_api.py and so anthropic_api.py / openai_api.py,
github_api.py, git_http.py, postgrest.py, tests/e2e/fakes/upstream.py): the threaded server, the
request log, and the handler's answer and /_fake/ control plumbing. Each fake keeps its own wire
format: its headers, its bodies, its routes.

    class Server(fakekit.RecordingServer):       # opts (defaults + given), lock, requests, rng
        def reset_state(self):                   # POST /_fake/reset, with the lock held
            self.pulls.clear()

    class Handler(fakekit.Handler):
        def _send_json(self, status, obj):       # how the control routes answer (default below)
            self._send(status, obj)

    server, thread, port = fakekit.serve(Server(("127.0.0.1", 0), opts, Handler, DEFAULTS))

Server: listen backlog 1024 (set before the constructor runs listen(): the default of 5 makes
concurrent connects stall in SYN retries), daemon threads, address reuse; server.url
(http://127.0.0.1:PORT) and server.close(). RecordingServer adds opts, lock, requests (the log),
rng (random.Random(opts["seed"])) and record(entry): the entry with seq (1, 2, ...) and ts
(time.time()) first, appended to requests and, when record_log is true and opts["log"] is set,
as one JSON line to that file; returns the stored entry.

Handler: HTTP/1.1, no access log on stderr. _send_bytes(status, body, headers) writes the status,
the headers (a dict or (name, value) pairs, in order), Content-Length, then the body (not for
HEAD) and sets self.entry["status"] when the request was recorded. _control(path, raw) answers
GET /_fake/requests (the log), POST /_fake/config (JSON merged into the options; answers them),
POST /_fake/reset (clears the log and calls server.reset_state(); answers the options) and any
other /_fake/ path with the options, each through _send_json(status, obj) (default: compact
JSON, Content-Type: application/json). _json_request() reads a request with a Content-Length
body: a /_fake/ one is answered by _control (None), any other is recorded (method, path, query
(parse_qs), headers (lower-case names), body (parsed JSON, else the text)) and gives (url, body).
"""
import http.server
import json
import random
import threading
import time
import urllib.parse


class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024  # listen backlog: must be set before the constructor runs listen()
    daemon_threads = True
    allow_reuse_address = True

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.server_address[1]

    def close(self):
        self.shutdown()
        self.server_close()


class RecordingServer(Server):
    record_log = True  # record() appends the entry to opts["log"] (a fake may log later itself)

    def __init__(self, addr, opts, handler, defaults):
        self.opts = dict(defaults)
        self.opts.update(opts)
        self.lock = threading.Lock()
        self.requests = []
        self.rng = random.Random(self.opts.get("seed"))
        super().__init__(addr, handler)

    def record(self, entry):
        with self.lock:
            entry = dict(seq=len(self.requests) + 1, ts=time.time(), **entry)
            self.requests.append(entry)
            if self.record_log and self.opts.get("log"):
                with open(self.opts["log"], "a") as f:
                    f.write(json.dumps(entry) + "\n")
        return entry

    def reset_state(self):
        """What POST /_fake/reset clears besides the request log (called with the lock held)."""


def serve(server):
    """Serves in a daemon thread. Returns (server, thread, port)."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, thread, server.server_address[1]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    entry = None  # the recorded request (None: not recorded, e.g. a control route)

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send_bytes(self, status, body, headers=None):
        self.send_response(status)
        for k, v in (headers.items() if isinstance(headers, dict) else headers or ()):
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        if self.entry is not None:
            self.entry["status"] = status

    def _send_json(self, status, obj):
        self._send_bytes(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def _control(self, path, raw):
        srv = self.server
        if path == "/_fake/requests":
            return self._send_json(200, srv.requests)
        if path == "/_fake/config" and self.command == "POST":
            srv.opts.update(json.loads(raw or b"{}"))
        elif path == "/_fake/reset" and self.command == "POST":
            with srv.lock:
                del srv.requests[:]
                srv.reset_state()
        self._send_json(200, srv.opts)

    def _json_request(self):
        """Reads the request (a Content-Length body). A /_fake/ path is answered by _control and
        gives None; any other request is recorded (method, path, query (parse_qs), headers (lower-
        case names), body (parsed JSON, else the text)) and gives (urlsplit result, body)."""
        self.entry = None
        url = urllib.parse.urlsplit(self.path)
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if url.path.startswith("/_fake/"):
            self._control(url.path, raw)
            return None
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", errors="replace")
        self.entry = self.server.record({"method": self.command, "path": url.path,
                                         "query": urllib.parse.parse_qs(url.query),
                                         "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
        return url, body
