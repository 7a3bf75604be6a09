"""E2E: error handling and cross-cutting behaviour (issue #2; seed-contract §1.0, §1.1, §7):
the JSON error envelope, 404/405/400/413/415/431, hostile input, CORS, rate limiting,
/, /ping, /health (503 when the database is locked), secrets never reaching logs or
responses, and configuration checks.
"""
import json
import os
import re
import select
import socket
import subprocess
import time
import unittest

import jwt

from harness import BIN, ROOT, Server, free_port, new_user

MAX_BODY = 1 << 20  # MAX_BODY_BYTES default


def unique_repo():
    unique_repo.n += 1
    return "https://github.com/err-owner/repo-%d-%d" % (os.getpid(), unique_repo.n)


unique_repo.n = 0


class RawResponse:
    def __init__(self, raw):
        self.raw = raw
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0]) if lines and lines[0] else None
        self.status = int(m.group(1)) if m else None
        self.headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._dechunk(body)
        self.body = body.decode("utf-8", "replace")
        try:
            self.json = json.loads(self.body)
        except ValueError:
            self.json = None

    @staticmethod
    def _dechunk(data):
        out = b""
        while data:
            size_line, _, rest = data.partition(b"\r\n")
            try:
                size = int(size_line.split(b";")[0], 16)
            except ValueError:
                break
            if size == 0:
                break
            out += rest[:size]
            data = rest[size + 2:]
        return out

    def __repr__(self):
        return "<RawResponse %r %r>" % (self.status, self.raw[:300])


def raw_exchange(port, head, body_chunks, timeout=15):
    """Sends `head`, then the body chunks until the server starts answering; returns the
    response. Works whether the server answers before or after the body is complete."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    data = b""
    try:
        s.sendall(head)
        for chunk in body_chunks:
            readable, _, _ = select.select([s], [], [], 0)
            if readable:
                break
            try:
                s.sendall(chunk)
            except OSError:
                break
        deadline = time.time() + timeout
        while time.time() < deadline:
            readable, _, _ = select.select([s], [], [], 0.5)
            if not readable:
                continue
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                r = RawResponse(data)
                n = r.headers.get("content-length")
                if n is not None and len(data.partition(b"\r\n\r\n")[2]) >= int(n):
                    break
                if r.headers.get("transfer-encoding", "").lower() == "chunked" and data.endswith(b"0\r\n\r\n"):
                    break
    finally:
        s.close()
    return RawResponse(data)


class ErrorAssertions(unittest.TestCase):
    def assertJsonError(self, r, status, message=None):
        self.assertEqual(r.status, status, r)
        self.assertTrue(r.headers.get("content-type", "").startswith("application/json"), r.headers)
        self.assertIsInstance(r.json, dict, r)
        self.assertEqual(set(r.json), {"error", "request_id"}, r)
        self.assertIsInstance(r.json["error"], str)
        self.assertTrue(r.json["error"])
        self.assertIsInstance(r.json["request_id"], str)
        self.assertTrue(r.json["request_id"])
        self.assertEqual(r.headers.get("x-request-id"), r.json["request_id"])
        if message is not None:
            self.assertEqual(r.json["error"], message, r)

    def assertNot500(self, r):
        self.assertLess(r.status, 500, r)
        self.assertIsNotNone(r.json, r)


# -- default configuration -------------------------------------------------------

class ErrorEnvelopeTests(ErrorAssertions):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server()
        cls.uid = new_user()
        cls.tok = cls.srv.token(cls.uid)

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()

    def user(self):
        uid = new_user()
        return uid, self.srv.token(uid)

    def post_raw(self, path, raw, ctype="application/json", token=None):
        headers = {"Content-Type": ctype} if ctype is not None else {}
        return self.srv.request("POST", path, raw=raw, token=token or self.tok, headers=headers)

    def count_projects(self, tok):
        return len(self.srv.request("GET", "/api/projects", token=tok).json["projects"])

    # envelope, 404, 405 ------------------------------------------------------
    def test_unknown_paths_404(self):
        for path in ("/nope", "/api", "/api/nope", "/api/projects/1/nope", "/api/auth", "/api/auth/verify/x",
                     "/%2e%2e/%2e%2e/etc/passwd", "/api/projects/../../etc/passwd", "/" + "a" * 2000):
            with self.subTest(path=path[:40]):
                self.assertJsonError(self.srv.request("GET", path, token=self.tok), 404, "Not found")
        self.assertJsonError(self.srv.request("POST", "/nope", body={"a": 1}), 404, "Not found")

    def test_request_ids_unique_and_on_success(self):
        a = self.srv.request("GET", "/ping")
        b = self.srv.request("GET", "/ping")
        self.assertRegex(a.headers.get("x-request-id", ""), r"^\S{8,}$")
        self.assertNotEqual(a.headers["x-request-id"], b.headers["x-request-id"])
        e1 = self.srv.request("GET", "/nope")
        e2 = self.srv.request("GET", "/nope")
        self.assertNotEqual(e1.json["request_id"], e2.json["request_id"])
        # The request id is what the log line records.
        ids = {line.get("request_id") for line in self.srv.log_lines()}
        self.assertIn(e1.json["request_id"], ids)

    def test_method_not_allowed_405(self):
        cases = [("DELETE", "/api/projects", {"GET", "POST"}), ("PATCH", "/ping", {"GET"}),
                 ("POST", "/health", {"GET"}), ("PUT", "/api/auth/token", {"POST"}),
                 ("GET", "/api/auth/refresh", {"POST"}), ("POST", "/api/projects/1", {"GET", "PUT", "DELETE"}),
                 ("PATCH", "/api/projects/1", {"GET", "PUT", "DELETE"}), ("DELETE", "/projects", {"GET", "POST"}),
                 ("POST", "/", {"GET"})]
        for method, path, allowed in cases:
            with self.subTest(method=method, path=path):
                r = self.srv.request(method, path, token=self.tok)
                self.assertJsonError(r, 405)
                self.assertIn("allow", r.headers)
                got = {m.strip() for m in r.headers["allow"].split(",")}
                self.assertTrue(allowed <= got, (allowed, got))
                self.assertNotIn(method, got)

    def test_unauthenticated_401_is_json(self):
        self.assertJsonError(self.srv.request("GET", "/api/projects"), 401, "Missing authorization header")
        self.assertJsonError(self.srv.request("GET", "/api/projects", token="x.y.z"), 401)

    # bodies -----------------------------------------------------------------
    def test_malformed_json_400(self):
        uid, tok = self.user()
        for raw in (b'{"name": ', b"{", b"}", b"nul", b"{'name': 'x'}", b'{"name":"x",}', b"\xff\xfe",
                    b'{"name":"a"} trailing', b"[1,2", b'{"a":1}{"b":2}', b"\x00"):
            with self.subTest(raw=raw):
                self.assertJsonError(self.post_raw("/api/projects", raw, token=tok), 400)
        self.assertEqual(self.count_projects(tok), 0)

    def test_duplicate_keys_400(self):
        uid, tok = self.user()
        url = unique_repo()
        for raw in ('{"name":"a","name":"b","repo_url":"%s"}' % url,
                    '{"name":"a","repo_url":"%s","repo_url":"https://github.com/x/y"}' % url,
                    '{"name":"a","repo_url":"%s","settings":{"k":1,"k":2}}' % url):
            with self.subTest(raw=raw):
                self.assertJsonError(self.post_raw("/api/projects", raw.encode(), token=tok), 400)
        self.assertEqual(self.count_projects(tok), 0)
        p = self.srv.request("POST", "/api/projects", body={"name": "ok", "repo_url": url}, token=tok).json["project"]
        r = self.post_raw("/api/projects/%d" % p["id"], b'{"name":"a","name":"b"}', token=tok)
        self.assertJsonError(r, 405)  # POST on the item: method first
        r = self.srv.request("PUT", "/api/projects/%d" % p["id"], raw=b'{"name":"a","name":"b"}', token=tok,
                             headers={"Content-Type": "application/json"})
        self.assertJsonError(r, 400)
        self.assertEqual(self.srv.request("GET", "/api/projects/%d" % p["id"], token=tok).json["project"]["name"],
                         "ok")

    def test_non_object_bodies_400(self):
        uid, tok = self.user()
        for raw in (b"[]", b'[{"name":"a","repo_url":"https://github.com/o/r"}]', b'"a string"', b"42", b"null",
                    b"true", b"1.5"):
            with self.subTest(raw=raw):
                self.assertJsonError(self.post_raw("/api/projects", raw, token=tok), 400)
                self.assertJsonError(self.post_raw("/api/auth/token", raw), 400)
                self.assertJsonError(self.post_raw("/api/auth/refresh", raw), 400)
        self.assertEqual(self.count_projects(tok), 0)

    def test_wrong_field_types_400(self):
        uid, tok = self.user()
        bad = [{"name": 5}, {"name": True}, {"name": ["a"]}, {"name": {"a": 1}}, {"repo_url": 5},
               {"repo_url": ["https://github.com/o/r"]}, {"description": 5}, {"description": False},
               {"settings": []}, {"settings": [1, 2]}, {"settings": "x"}, {"settings": 5}, {"settings": True},
               {"is_active": "yes"}, {"is_active": 1}, {"is_active": "true"}, {"is_active": []}]
        for override in bad:
            with self.subTest(body=override):
                body = {"name": "n", "repo_url": unique_repo()}
                body.update(override)
                r = self.srv.request("POST", "/api/projects", body=body, token=tok)
                self.assertJsonError(r, 400)
                self.assertIn(list(override)[0], r.json["error"])
        self.assertEqual(self.count_projects(tok), 0)

    def test_unsupported_content_type_415(self):
        uid, tok = self.user()
        body = json.dumps({"name": "n", "repo_url": unique_repo()}).encode()
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                      "application/xml", "application/jsonx", "text/json", None):
            with self.subTest(ctype=ctype):
                self.assertJsonError(self.post_raw("/api/projects", body, ctype=ctype, token=tok), 415)
                self.assertJsonError(self.post_raw("/api/auth/refresh", b'{"refresh_token":"x"}', ctype=ctype), 415)
        self.assertEqual(self.count_projects(tok), 0)
        # Parameters and case are fine.
        for ctype in ("application/json; charset=utf-8", "Application/JSON"):
            with self.subTest(ctype=ctype):
                r = self.post_raw("/api/projects", json.dumps({"name": "n", "repo_url": unique_repo()}).encode(),
                                  ctype=ctype, token=tok)
                self.assertEqual(r.status, 200, r)

    def _oversized_head(self, path, extra):
        return ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
                "Content-Type: application/json\r\n%sConnection: close\r\n\r\n" % (path, self.tok, extra)).encode()

    def _assert_413_then_alive(self, r):
        self.assertEqual(r.status, 413, r)
        self.assertTrue(r.headers.get("content-type", "").startswith("application/json"), r)
        self.assertIsInstance(r.json, dict, r)
        self.assertEqual(set(r.json), {"error", "request_id"}, r)
        self.assertEqual(r.headers.get("x-request-id"), r.json["request_id"])
        # One JSON log line per request, the 413 included.
        self.assertIn(r.json["request_id"], {l.get("request_id") for l in self.srv.log_lines()})

    def test_body_too_large_content_length_413(self):
        n = MAX_BODY + 1
        head = self._oversized_head("/api/projects", "Content-Length: %d\r\n" % n)
        body = [b"x" * 65536] * (n // 65536) + [b"x" * (n % 65536)]
        r = raw_exchange(self.srv.port, head, body)
        self.assertEqual(r.status, 413, r)
        self.assertEqual(self.srv.request("GET", "/ping").status, 200, "the server must keep serving")
        self._assert_413_then_alive(r)

    def test_body_too_large_chunked_413(self):
        head = self._oversized_head("/api/projects", "Transfer-Encoding: chunked\r\n")
        chunks = [b"10000\r\n" + b"y" * 65536 + b"\r\n"] * 20 + [b"0\r\n\r\n"]  # 1.25 MiB
        r = raw_exchange(self.srv.port, head, chunks)
        self.assertEqual(r.status, 413, r)
        self.assertEqual(self.srv.request("GET", "/ping").status, 200, "the server must keep serving")
        self._assert_413_then_alive(r)

    def test_body_far_too_large_413(self):
        n = 8 * MAX_BODY
        head = self._oversized_head("/api/projects", "Content-Length: %d\r\n" % n)
        r = raw_exchange(self.srv.port, head, [b"z" * 65536] * (n // 65536))
        self.assertEqual(r.status, 413, r)
        self.assertEqual(self.srv.request("GET", "/ping").status, 200)
        self._assert_413_then_alive(r)

    def test_body_just_under_limit_not_413(self):
        uid, tok = self.user()
        prefix = '{"name":"n","repo_url":"%s","description":"' % unique_repo()
        for size in (MAX_BODY, MAX_BODY - 100):
            with self.subTest(size=size):
                raw = (prefix + "d" * (size - len(prefix) - 2) + '"}').encode()
                self.assertEqual(len(raw), size)
                r = self.post_raw("/api/projects", raw, token=tok)
                self.assertJsonError(r, 400)  # description is at most 10000 bytes: validation, not size
                self.assertIn("description", r.json["error"])
        # Chunked, under the limit, valid: accepted.
        body = json.dumps({"name": "chunked", "repo_url": unique_repo(), "description": "c" * 5000}).encode()
        head = ("POST /api/projects HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                % tok).encode()
        chunks = [b"%x\r\n%s\r\n" % (len(body[i:i + 1000]), body[i:i + 1000]) for i in range(0, len(body), 1000)]
        r = raw_exchange(self.srv.port, head, chunks + [b"0\r\n\r\n"])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["project"]["name"], "chunked")

    # hostile input ---------------------------------------------------------
    def test_hostile_strings(self):
        uid, tok = self.user()
        hostile = ["$(rm -rf /); `id` | cat /etc/passwd && echo > /tmp/pwned", "../../../../etc/passwd",
                   "..\\..\\windows\\system32", "line1\nline2\r\nline3", "tab\there", "'; DROP TABLE projects; --",
                   "\" OR \"1\"=\"1", "<script>alert(1)</script>", "%00%2e%2e%2f", "${jndi:ldap://x/a}",
                   "{{7*7}}", "\u202eevil", "émoji 🚀 漢字", "\x7f\x01\x1b[31m", "a" * 200]
        for s in hostile:
            with self.subTest(s=s[:30]):
                r = self.srv.request("POST", "/api/projects", token=tok,
                                     body={"name": s, "description": s, "repo_url": unique_repo(),
                                           "settings": {s: s}})
                self.assertNot500(r)
                if r.status == 200:
                    p = self.srv.request("GET", "/api/projects/%d" % r.json["project"]["id"], token=tok)
                    self.assertEqual(p.json["project"]["name"], s)
                    self.assertEqual(p.json["project"]["description"], s)
                    self.assertEqual(p.json["project"]["settings"], {s: s})
                else:
                    self.assertJsonError(r, 400)
        # NUL bytes: stored verbatim or refused cleanly.
        r = self.srv.request("POST", "/api/projects", token=tok,
                             body={"name": "nul\u0000byte", "repo_url": unique_repo()})
        self.assertNot500(r)
        if r.status == 200:
            p = self.srv.request("GET", "/api/projects/%d" % r.json["project"]["id"], token=tok)
            self.assertEqual(p.json["project"]["name"], "nul\u0000byte")
        else:
            self.assertJsonError(r, 400)
        # Too long: name is at most 200.
        r = self.srv.request("POST", "/api/projects", token=tok, body={"name": "n" * 10000, "repo_url": unique_repo()})
        self.assertJsonError(r, 400)
        self.assertIn("name", r.json["error"])
        self.assertJsonError(self.srv.request("POST", "/api/projects", token=tok,
                                              body={"name": "é" * 101, "repo_url": unique_repo()}), 400)
        # Hostile repo URLs are refused, not cloned or stored.
        for url in ("https://github.com/o/r$(id)", "https://github.com/o/r`id`", "https://github.com/o/r;id",
                    "https://github.com/o/r\nx", "https://github.com/o/r\u0000", "-oProxyCommand=id",
                    "https://github.com/--upload-pack=id/r", "https://github.com/o/r " + "x" * 5000):
            with self.subTest(url=url[:40]):
                r = self.srv.request("POST", "/api/projects", token=tok, body={"name": "n", "repo_url": url})
                self.assertNot500(r)
                self.assertJsonError(r, 400)
        self.assertEqual(self.srv.request("GET", "/health").status, 200)

    def test_huge_and_odd_ids(self):
        for path in ("/api/projects/99999999999999999999", "/api/projects/9223372036854775807",
                     "/api/projects/9223372036854775808", "/api/projects/" + "9" * 400, "/api/projects/-0",
                     "/api/projects/999999999999999999/tasks", "/api/projects/1.0e3", "/api/projects/%00"):
            for method in ("GET", "PUT", "DELETE"):
                with self.subTest(path=path[:50], method=method):
                    r = self.srv.request(method, path, token=self.tok, body={"name": "x"} if method == "PUT" else None)
                    self.assertNot500(r)
                    # /tasks exists for GET only: other methods are a 405 for any id that parses
                    expected = 405 if path.endswith("/tasks") and method != "GET" else 404
                    self.assertJsonError(r, expected)

    def test_too_many_headers_431(self):
        headers = {"X-Filler-%d" % i: "v" for i in range(70)}
        r = self.srv.request("GET", "/ping", headers=headers)
        self.assertJsonError(r, 431)
        r = self.srv.request("GET", "/api/projects", headers=headers, token=self.tok)
        self.assertJsonError(r, 431)
        # A normal request with a few dozen headers is fine.
        r = self.srv.request("GET", "/ping", headers={"X-Filler-%d" % i: "v" for i in range(40)})
        self.assertEqual(r.status, 200, r)
        # Headers too large in total (over MAX_HEADER_BYTES, 16 KiB) are refused as well.
        r = self.srv.request("GET", "/ping", headers={"X-Big": "b" * 20000})
        self.assertJsonError(r, 431)
        self.assertEqual(self.srv.request("GET", "/ping").status, 200)

    # /, /ping, /health -------------------------------------------------------
    def test_root(self):
        r = self.srv.request("GET", "/")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json, {"status": "success", "message": "Claude Code Automation API",
                                  "endpoints": ["/ping", "/start-task", "/task-status", "/git-diff", "/create-pr"]})
        self.assertEqual(r.headers.get("content-type"), "application/json")

    def test_ping(self):
        before = time.time()
        r = self.srv.request("GET", "/ping")
        after = time.time()
        self.assertEqual(r.status, 200)
        self.assertEqual(set(r.json), {"status", "message", "timestamp"})
        self.assertEqual(r.json["status"], "success")
        self.assertEqual(r.json["message"], "pong")
        self.assertIs(type(r.json["timestamp"]), float)
        self.assertGreaterEqual(r.json["timestamp"], before - 1)
        self.assertLessEqual(r.json["timestamp"], after + 1)

    def test_health(self):
        r = self.srv.request("GET", "/health")
        self.assertEqual(r.status, 200, r)
        h = r.json
        self.assertEqual(h["status"], "ok")
        self.assertIs(type(h["version"]), str)
        self.assertTrue(h["version"])
        self.assertIs(type(h["uptime_seconds"]), int)
        self.assertGreaterEqual(h["uptime_seconds"], 0)
        self.assertLess(h["uptime_seconds"], 3600)
        self.assertIs(h["store"]["reachable"], True)
        self.assertEqual(h["store"]["backend"], self.srv.store)
        self.assertIn("sandbox_providers", h)
        self.assertIn("agents", h)

    def test_health_503_when_database_locked(self):
        # SQLite: another connection holds the write lock; Supabase: the database is down.
        with self.srv.store_outage():
            t0 = time.time()
            r = self.srv.request("GET", "/health", timeout=10)
            elapsed = time.time() - t0
            self.assertEqual(r.status, 503, r)
            self.assertEqual(r.headers.get("content-type"), "application/json")
            self.assertIs(r.json["store"]["reachable"], False)
            self.assertNotEqual(r.json["status"], "ok")
            self.assertLess(elapsed, 5, "a locked store must be reported quickly")
            self.assertNotIn("locked", r.body.lower().replace("reachable", ""))  # no driver text
            # /ping does not touch the store.
            self.assertEqual(self.srv.request("GET", "/ping").status, 200)
        r = self.srv.request("GET", "/health")
        self.assertEqual(r.status, 200, r)
        self.assertIs(r.json["store"]["reachable"], True)


# -- CORS --------------------------------------------------------------------------

ORIGIN = "https://app.example.com"


class CorsTests(ErrorAssertions):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server(env={"CORS_ORIGINS": ORIGIN})

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()

    def preflight(self, origin, path="/api/projects", method="POST"):
        return self.srv.request("OPTIONS", path, headers={"Origin": origin, "Access-Control-Request-Method": method,
                                                          "Access-Control-Request-Headers": "authorization,content-type"})

    def test_preflight_allowed_origin(self):
        for path, method in (("/api/projects", "POST"), ("/api/projects/5", "DELETE"), ("/api/auth/token", "POST"),
                             ("/api/projects/5", "PUT")):
            with self.subTest(path=path, method=method):
                r = self.preflight(ORIGIN, path, method)
                self.assertEqual(r.status, 204, r)
                self.assertEqual(r.body, "")
                self.assertEqual(r.headers.get("access-control-allow-origin"), ORIGIN)
                methods = {m.strip().upper() for m in r.headers.get("access-control-allow-methods", "").split(",")}
                self.assertTrue({"GET", "POST", "PUT", "DELETE"} <= methods, methods)
                allowed = {h.strip().lower() for h in r.headers.get("access-control-allow-headers", "").split(",")}
                self.assertTrue({"authorization", "content-type"} <= allowed, allowed)
                self.assertIn("origin", r.headers.get("vary", "").lower())

    def test_preflight_other_origin_refused(self):
        for origin in ("https://evil.example.com", "http://app.example.com", "https://app.example.com.evil.com",
                       "null", "http://localhost:3000"):
            with self.subTest(origin=origin):
                r = self.preflight(origin)
                self.assertJsonError(r, 403)
                self.assertNotIn("access-control-allow-origin", r.headers)

    def test_simple_request_origin_headers(self):
        r = self.srv.request("GET", "/ping", headers={"Origin": ORIGIN})
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers.get("access-control-allow-origin"), ORIGIN)
        r = self.srv.request("GET", "/ping", headers={"Origin": "https://evil.example.com"})
        self.assertEqual(r.status, 200)
        self.assertNotIn("access-control-allow-origin", r.headers)
        r = self.srv.request("GET", "/ping")
        self.assertNotIn("access-control-allow-origin", r.headers)
        # Error responses carry it too, so the browser app can read the error.
        r = self.srv.request("GET", "/api/projects", headers={"Origin": ORIGIN})
        self.assertJsonError(r, 401)
        self.assertEqual(r.headers.get("access-control-allow-origin"), ORIGIN)
        # An authenticated request from the app works and is tagged.
        uid = new_user()
        r = self.srv.request("GET", "/api/projects", token=self.srv.token(uid), headers={"Origin": ORIGIN})
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers.get("access-control-allow-origin"), ORIGIN)


# -- rate limiting -------------------------------------------------------------------

class RateLimitTests(ErrorAssertions):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server(env={"RATE_LIMIT_PER_MINUTE": "5", "RATE_LIMIT_IP_PER_MINUTE": "3"})
        if cls.srv.store == "supabase":
            # The counters live in the database there, shared by every server of this test
            # process: 127.0.0.1's budget is not this server's alone. A fresh start.
            cls.srv.sql("DELETE FROM rate_limits")

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()

    def assert429(self, r):
        self.assertJsonError(r, 429)
        self.assertIn("retry-after", r.headers)
        self.assertRegex(r.headers["retry-after"], r"^\d+$")
        self.assertGreaterEqual(int(r.headers["retry-after"]), 1)
        self.assertLessEqual(int(r.headers["retry-after"]), 60)

    def test_per_user_limit(self):
        a, b = new_user(), new_user()
        tok_a, tok_b = self.srv.token(a), self.srv.token(b)
        for i in range(5):
            r = self.srv.request("GET", "/api/projects", token=tok_a)
            self.assertEqual(r.status, 200, (i, r))
        self.assert429(self.srv.request("GET", "/api/projects", token=tok_a))
        self.assert429(self.srv.request("GET", "/api/auth/verify", token=tok_a))
        self.assert429(self.srv.request("POST", "/api/projects", token=tok_a,
                                        body={"name": "n", "repo_url": "https://github.com/o/limited"}))
        # Another user is unaffected.
        for i in range(5):
            self.assertEqual(self.srv.request("GET", "/api/projects", token=tok_b).status, 200, i)
        # A fresh token for the same user does not reset the user's budget.
        self.assert429(self.srv.request("GET", "/api/projects", token=self.srv.token(a)))
        # The refused POST did nothing.
        n = self.srv.sql("SELECT count(*) AS n FROM projects WHERE user_id = ?", (a,))[0]["n"]
        self.assertEqual(n, 0)

    def test_per_ip_limit_on_unauthenticated_routes(self):
        refresh = self.srv.tokens(new_user())["refresh_token"]
        for i in range(3):
            r = self.srv.request("POST", "/api/auth/refresh", body={"refresh_token": refresh})
            self.assertEqual(r.status, 200, (i, r))
        self.assert429(self.srv.request("POST", "/api/auth/refresh", body={"refresh_token": refresh}))
        self.assert429(self.srv.request("POST", "/api/auth/token", body={"user_id": new_user()}))
        # Health endpoints are exempt.
        for i in range(10):
            self.assertEqual(self.srv.request("GET", "/ping").status, 200, i)
            self.assertEqual(self.srv.request("GET", "/health").status, 200, i)
            self.assertEqual(self.srv.request("GET", "/").status, 200, i)


# -- secrets -----------------------------------------------------------------------

CANARIES = {
    "JWT_SECRET": "canary-jwt-secret-7f3a9c1e5b2d4f6a8c0e1b",  # 40 chars
    "GITHUB_TOKEN": "ghp_canaryGithubToken0123456789abcdefXYZ",
    "ANTHROPIC_API_KEY": "sk-ant-canary-anthropic-key-0123456789",
    "OPENAI_API_KEY": "sk-canary-openai-key-abcdef0123456789",
    "SUPABASE_SERVICE_ROLE_KEY": "canary-supabase-service-role-key-98765",
}


class SecretsTests(ErrorAssertions):
    @classmethod
    def setUpClass(cls):
        assert len(CANARIES["JWT_SECRET"]) == 40
        cls.srv = Server(env=dict(CANARIES))

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()

    def test_secrets_never_in_logs_or_responses(self):
        srv = self.srv
        uid = new_user()
        pair = srv.tokens(uid)
        access = pair["access_token"]
        # The canary really is the signing secret (the test would be vacuous otherwise).
        self.assertEqual(jwt.decode(access, CANARIES["JWT_SECRET"], algorithms=["HS256"])["user_id"], uid)
        self.assertFalse(os.path.exists(os.path.join(srv.data_dir, "jwt_secret")))
        canaries = list(CANARIES.values())
        responses = []

        def call(*a, **kw):
            r = srv.request(*a, **kw)
            responses.append(r)
            return r

        self.assertEqual(call("GET", "/api/projects", token=access).status, 200)
        self.assertEqual(call("GET", "/api/auth/verify", token=access).status, 200)
        bad = access[:-4] + ("AAAA" if not access.endswith("AAAA") else "BBBB")
        self.assertEqual(call("GET", "/api/projects", token=bad).status, 401)
        forged = jwt.encode({"user_id": canaries[1], "type": "access", "exp": int(time.time()) + 60},
                            CANARIES["JWT_SECRET"], algorithm="HS256")
        self.assertEqual(call("GET", "/api/projects", token=forged).status, 401)
        for c in canaries:
            call("GET", "/api/projects?token=%s&access_token=%s" % (c, access), token=access)
            call("GET", "/api/projects/%s" % c, token=access)  # path segments are logged: must be redacted
            call("GET", "/%s" % c)
            call("GET", "/api/projects", headers={"Authorization": "Bearer " + c})
            call("GET", "/api/projects", token=access, headers={"X-Api-Key": c, "Cookie": "session=" + c})
            call("POST", "/api/auth/refresh", body={"refresh_token": c})
            call("POST", "/api/auth/token", body={"user_id": uid, "password": c, "github_token": c})
            call("POST", "/api/projects", token=access,
                 body={"name": "n", "repo_url": unique_repo(), "github_token": c, "api_key": c})
            call("PUT", "/api/projects/1", token=access, body={"anthropic_api_key": c})
            call("POST", "/api/projects?key=%s" % c, token=access, raw=('{"x":"%s"' % c).encode(),
                 headers={"Content-Type": "application/json"})
            call("POST", "/api/projects", token=access, raw=("secret=%s" % c).encode(),
                 headers={"Content-Type": "text/plain"})
        self.assertEqual(call("GET", "/health").status, 200)
        srv.stop()  # flush everything, including shutdown messages
        stderr = srv.proc.stderr.read().decode("utf-8", "replace")
        log = srv.log_text()
        self.assertIn('"status":401', log.replace(" ", ""), "the log must contain the request lines")
        # Paths carrying a canary were logged, with the canary redacted (not dropped).
        self.assertIn("[redacted]", log)
        secrets = canaries + [access, pair["refresh_token"]]
        for s in secrets:
            self.assertNotIn(s, log, "secret in the server log")
            self.assertNotIn(s, stderr, "secret on the server's stderr")
            for r in responses:
                self.assertNotIn(s, r.body, "secret in a response body: %r" % r)
                for k, v in r.headers.items():
                    self.assertNotIn(s, v, "secret in response header %s" % k)

    def test_short_jwt_secret_refused_at_start(self):
        short = "short-jwt-secret-xyz"
        r = subprocess.run([BIN, "serve"], cwd=ROOT, capture_output=True, text=True, timeout=15,
                           env=dict(self.srv.env, PORT=str(free_port()), JWT_SECRET=short))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("JWT_SECRET", r.stderr)
        self.assertIn("32", r.stderr)
        self.assertNotIn(short, r.stderr + r.stdout, "the bad secret itself must not be echoed")

    def test_check_config(self):
        ok = self.srv.cli("check-config")
        self.assertEqual(ok.returncode, 0, ok.stdout + ok.stderr)
        self.assertIn("configuration ok", ok.stdout)
        short = "short-jwt-secret-xyz"
        bad = self.srv.cli("check-config", env={"JWT_SECRET": short})
        out = bad.stdout + bad.stderr
        self.assertEqual(bad.returncode, 1, out)
        self.assertIn("JWT_SECRET", out)
        self.assertIn("32", out)
        self.assertNotIn(short, out)
        self.assertNotIn("configuration ok", out, "a failing check must not also say ok")
        bad = self.srv.cli("check-config", env={"RATE_LIMIT_PER_MINUTE": "lots", "CORS_ORIGINS": "not an origin"})
        out = bad.stdout + bad.stderr
        self.assertEqual(bad.returncode, 1, out)
        self.assertIn("RATE_LIMIT_PER_MINUTE", out)
        self.assertIn("CORS_ORIGINS", out)
        self.assertNotIn("configuration ok", out)


if __name__ == "__main__":
    unittest.main()
