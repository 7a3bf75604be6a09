"""Helpers for the E2B provider e2e tests (tests/e2e/test_e2b_tasks.py) and bench/e2b.py.

    double = E2BDouble()                       # tests/fakes/e2b.py in a thread, a canary API key
    double.control()                           # GET /_control (over HTTP, as a client would)
    double.control({"create_429_next": 1})     # POST /_control (options and actions)
    double.live()                              # live sandboxes, [{"sandboxID", "metadata", ...}]
    double.for_task(tid)                       # the live sandboxes tagged with that task id
    srv = e2b_task_server(double, repos, env)  # bin/aicode with SANDBOX_PROVIDER=e2b on the double
    srv.responses                              # every API response body the server gave (canary checks)

The double's fault knobs are reset between tests with double.reset_faults().
"""
import http.client
import json
import os
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "fakes"))

import e2b  # noqa: E402  (tests/fakes/e2b.py)
from fakes.tasks_kit import task_server  # noqa: E402

FAULT_KEYS = ("create_delay_ms", "create_429_next", "retry_after", "create_5xx_next", "create_5xx_status",
              "drop_stream_next", "drop_after_events", "stream_error_next", "stream_error_after_events",
              "start_delay_ms", "expire_next", "expire_after_s", "envd_unavailable_next",
              "envd_unavailable_status", "envd_down", "max_sandboxes", "templates",
              "list_5xx_next", "list_bad_token_next", "list_endless")


def canary_key():
    """An E2B-looking API key that is easy to grep for."""
    return "e2b_CANARY" + uuid.uuid4().hex


class E2BDouble:
    """The local E2B double (control plane and envd on one port), in-process."""

    def __init__(self, key=None, **opts):
        self.key = key or canary_key()
        self.server, self.thread, self.port = e2b.start(api_key=self.key, **opts)
        self.url = self.server.url
        self.defaults = {k: (list(v) if isinstance(v, list) else v) for k, v in self.server.opts.items()
                         if k in FAULT_KEYS}

    def reset_faults(self):
        with self.server.lock:
            self.server.opts.update({k: (list(v) if isinstance(v, list) else v) for k, v in self.defaults.items()})
            self.server.opts["api_key"] = self.key

    def _http(self, method, path, body=None, headers=None, timeout=20):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = json.dumps(body) if body is not None else None
            h = {"Content-Type": "application/json"} if data is not None else {}
            h.update(headers or {})
            c.request(method, path, data, h)
            r = c.getresponse()
            raw = r.read()
            try:
                return r.status, json.loads(raw) if raw else None
            except ValueError:
                return r.status, raw
        finally:
            c.close()

    def control(self, body=None):
        """GET /_control, or POST /_control with body. -> the double's state."""
        status, state = self._http("POST" if body is not None else "GET", "/_control", body)
        if status != 200:
            raise AssertionError("/_control answered %s: %r" % (status, state))
        return state

    def api(self, method, path, body=None):
        """A control-plane call with the right key -> (status, json)."""
        return self._http(method, path, body, headers={"X-API-Key": self.key})

    def create(self, metadata, template="base", timeout=120):
        status, sb = self.api("POST", "/sandboxes", {"templateID": template, "timeout": timeout, "secure": True,
                                                     "metadata": metadata})
        if status != 201:
            raise AssertionError("create answered %s: %r" % (status, sb))
        return sb["sandboxID"]

    def live(self):
        return self.control()["sandboxes"]

    def live_ids(self):
        return [s["sandboxID"] for s in self.live()]

    def for_task(self, tid):
        return [s for s in self.live() if (s.get("metadata") or {}).get("task_id") == str(tid)]

    def killed(self):
        return self.control()["killed"]

    def requests(self, since=0):
        with self.server.log_lock:
            return list(self.server.requests[since:])

    def mark(self):
        with self.server.log_lock:
            return len(self.server.requests)

    def close(self):
        self.server.close()


class RecordingResponses:
    """Wraps srv.request so that every response body the API gave is kept (for canary checks)."""

    def __init__(self, srv):
        self.bodies = []
        orig = srv.request

        def request(*a, **kw):
            r = orig(*a, **kw)
            self.bodies.append("%d %s %s" % (r.status, json.dumps(r.headers), r.body))
            return r
        srv.request = request

    def add(self, text):
        self.bodies.append(text)

    def text(self):
        return "\n".join(self.bodies)


def e2b_env(double, template="aicode-agents", key=None, extra=None):
    e = {
        "SANDBOX_PROVIDER": "e2b",
        "E2B_API_KEY": key or double.key,
        "E2B_API_URL": double.url,
        "E2B_SANDBOX_URL": double.url,
        "E2B_TEMPLATE": template,
    }
    e.update(extra or {})
    return e


def e2b_task_server(double, repos=None, env=None, hosts=None, template="aicode-agents", start=True):
    """bin/aicode with SANDBOX_PROVIDER=e2b on the double; srv.responses records every API answer."""
    srv = task_server(repos, env=e2b_env(double, template, extra=env), hosts=hosts, start=start)
    srv.responses = RecordingResponses(srv)
    return srv


def wait_until(fn, timeout=10, interval=0.05):
    """fn() until truthy -> its value, or the last (falsy) value after timeout."""
    deadline = time.time() + timeout
    while True:
        v = fn()
        if v or time.time() > deadline:
            return v
        time.sleep(interval)
