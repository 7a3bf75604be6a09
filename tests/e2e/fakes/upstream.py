"""A fake upstream HTTP server for host.http tests.

    with Upstream() as up:
        up.url("/delay/200")   # answers "upstream-ok" after 200 ms
        up.requests            # every request seen: dicts with method, path, headers, body

Paths:
    /delay/<ms>   sleeps <ms> milliseconds, then 200 "upstream-ok"
    /big/<n>      200 with a body of n bytes of "x"
    /echo         200 JSON {method, path, headers (lower-case names), body}
    /headers      200 with mixed-case response headers (X-Mixed-Case, X-Another-ONE)
    /redirect     302 to /echo?redirected
    anything else 200 "upstream-ok"

The server and the handler's _send_bytes (status, headers, Content-Length, no body for
HEAD) are tests/fakes/fakekit.py's; its listen backlog (request_queue_size) is raised on
the class before the server is constructed: socketserver passes it to listen() in the
constructor, and the default of 5 makes concurrent connects stall in SYN retries
(toolchain-facts §9).
"""
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "fakes"))
import fakekit  # noqa: E402  (tests/fakes)

BODY = b"upstream-ok"


class _Handler(fakekit.Handler):
    def _record(self, body):
        entry = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
        }
        with self.server.lock:
            self.server.seen.append(entry)
        return entry

    def _send(self, status, body, headers=None):
        self._send_bytes(status, body, headers)

    def _handle(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        entry = self._record(body.decode("utf-8", errors="replace"))
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[0] == "delay" and len(parts) > 1:
            time.sleep(int(parts[1]) / 1000.0)
            self._send(200, BODY, {"Content-Type": "text/plain"})
        elif parts[0] == "big" and len(parts) > 1:
            self._send(200, b"x" * int(parts[1]), {"Content-Type": "text/plain"})
        elif parts[0] == "echo":
            self._send(200, json.dumps(entry).encode(), {"Content-Type": "application/json"})
        elif parts[0] == "redirect":
            self._send(302, b"moved", {"Location": "/echo?redirected", "Content-Type": "text/plain"})
        elif parts[0] == "headers":
            self._send(200, BODY, {"Content-Type": "text/plain", "X-Mixed-Case": "Keep-Value-Case",
                                   "X-Another-ONE": "two"})
        else:
            self._send(200, BODY, {"Content-Type": "text/plain"})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


class _Server(fakekit.Server):
    def handle_error(self, request, client_address):
        # The host cancelling a call (client gone, deadline) closes our socket
        # mid-response: expected in these tests, not worth a traceback.
        import sys
        import ssl
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, ssl.SSLError)):
            super().handle_error(request, client_address)


class Upstream:
    """tls=(certfile, keyfile) serves https (a self-signed cert: the host must refuse it)."""

    def __init__(self, tls=None):
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.scheme = "http"
        if tls:
            import ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.server.lock = threading.Lock()
        self.server.seen = []
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def url(self, path="/"):
        return "%s://127.0.0.1:%d%s" % (self.scheme, self.port, path)

    @property
    def requests(self):
        with self.server.lock:
            return list(self.server.seen)

    def close(self):
        self.server.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def refused_port():
    """A local port with nothing listening (bound then closed)."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
