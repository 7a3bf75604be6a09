"""Process lifecycle and per-request bookkeeping: SIGTERM drains in-flight
requests, WORKERS=2 really runs two workers (two VMs), and every request leaves
exactly one JSON access-log line."""
import json
import signal
import socket
import threading
import time
import unittest

from harness import Server, new_user
from fakes.hostkit import concurrent_get, tree_server, wait_for


class DrainTest(unittest.TestCase):
    def test_sigterm_lets_in_flight_request_finish(self):
        srv = tree_server(workers=2)
        try:
            box = {}
            slow = threading.Thread(target=lambda: box.update(r=srv.request("GET", "/test/sleep?s=1")))
            slow.start()
            time.sleep(0.15)  # ordering only: the request is in flight before the signal
            t_sig = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)

            def refused():
                try:
                    socket.create_connection(("127.0.0.1", srv.port), timeout=0.5).close()
                    return False
                except (ConnectionRefusedError, ConnectionResetError):
                    return True  # (reset: the SYN sat in a listener's queue as it closed)
            self.assertTrue(wait_for(refused, 1.0), "new connections still accepted after SIGTERM")
            self.assertTrue(slow.is_alive(), "in-flight request ended before its sleep did")
            slow.join(5)
            self.assertEqual(box["r"].status, 200, box["r"])
            self.assertEqual(box["r"].json, {"slept": 1})
            rc = srv.proc.wait(5)
            print("\n# SIGTERM drain: exited %d after %.2f s" % (rc, time.monotonic() - t_sig),
                  file=__import__("sys").stderr, flush=True)
            self.assertEqual(rc, 0)
            self.assertLess(time.monotonic() - t_sig, 3.0)
            log = srv.log_text()
            self.assertIn("draining", log)
            self.assertIn('"status":200', log)
        finally:
            srv.close()

    def test_drain_timeout_bounds_shutdown(self):
        srv = tree_server(env={"DRAIN_TIMEOUT_MS": "500"})
        try:
            box = {}

            def slow():
                try:
                    box["r"] = srv.request("GET", "/test/sleep?s=10")
                except OSError as e:
                    box["e"] = e
            t = threading.Thread(target=slow)
            t.start()
            time.sleep(0.15)  # ordering only: the request is in flight before the signal
            t0 = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            rc = srv.proc.wait(5)
            elapsed = time.monotonic() - t0
            t.join(5)
            self.assertEqual(rc, 0)
            self.assertGreaterEqual(elapsed, 0.45)
            self.assertLess(elapsed, 2.0, "DRAIN_TIMEOUT_MS=500 not honoured")
            self.assertIn("e", box, "a 10 s request cannot have completed")
            warn = [l for l in srv.log_lines() if l.get("level") == "warn" and "drain timeout" in l.get("msg", "")]
            self.assertEqual(len(warn), 1, srv.log_text()[-1000:])
        finally:
            srv.close()

    def test_sigterm_when_idle_exits_promptly(self):
        with Server() as srv:
            t0 = time.monotonic()
            self.assertEqual(srv.stop(), 0)
            self.assertLess(time.monotonic() - t0, 2.0)


class TwoWorkersTest(unittest.TestCase):
    def test_both_workers_serve(self):
        with tree_server(workers=2) as srv:
            results, _ = concurrent_get(srv.port, "/ping", 200)
            self.assertEqual([s for s, _, _ in results], [200] * 200)
            vms = set()
            for _ in range(2):
                results, _ = concurrent_get(srv.port, "/test/vm", 100)
                self.assertEqual([s for s, _, _ in results], [200] * 100)
                vms |= {json.loads(b)["vm"] for _, _, b in results}
            # SO_REUSEPORT spreads 200 connections over both listeners; each worker has its own VM.
            self.assertEqual(len(vms), 2, "expected two workers (two Lua VMs), saw %d" % len(vms))


class PipeliningTest(unittest.TestCase):
    def test_pipelined_requests_answer_in_order(self):
        # The first request waits on a timer; the two behind it on the same
        # connection must wait their turn and come back in request order.
        with tree_server() as srv:
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(b"GET /test/sleep?s=0.2 HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET /test/sleep?s=0.01 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            s.settimeout(5)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
            self.assertEqual(data.count(b"HTTP/1.1 200"), 3, data)
            a, b, c = data.find(b'"slept":0.2'), data.find(b'"pong"'), data.find(b'"slept":0.01')
            self.assertTrue(0 < a < b < c, data)


class AccessLogTest(unittest.TestCase):
    def test_one_json_line_per_request(self):
        with Server() as srv:
            user = new_user()
            token = srv.token(user)
            n_before = len(srv.log_lines())
            sent = []  # (response, expected method, expected path, expected user)
            r = srv.request("GET", "/ping?secret=abc&x=1")
            sent.append((r, "GET", "/ping", None))
            r = srv.request("GET", "/api/no/such/route")
            sent.append((r, "GET", "/api/no/such/route", None))
            r = srv.request("GET", "/api/projects", token=token)
            sent.append((r, "GET", "/api/projects", user))
            r = srv.request("POST", "/api/projects?draft=1", token=token,
                            body={"name": "p", "repo_url": "https://github.com/o/r"})
            sent.append((r, "POST", "/api/projects", user))
            r = srv.request("GET", "/api/projects", token="garbage")
            sent.append((r, "GET", "/api/projects", None))
            r = srv.request("GET", "/ping", headers={"x-many-%d" % i: "v" for i in range(80)})
            sent.append((r, "GET", "/ping", None))  # 431 from the host itself
            self.assertEqual([s[0].status for s in sent][:3], [200, 404, 200])
            self.assertEqual(sent[4][0].status, 401)
            self.assertEqual(sent[5][0].status, 431)

            def access():
                return [l for l in srv.log_lines()[n_before:] if l.get("msg") == "request"]
            self.assertTrue(wait_for(lambda: len(access()) >= len(sent), 2))
            lines = access()
            self.assertEqual(len(lines), len(sent), lines)
            for resp, method, path, user_id in sent:
                rid = resp.headers.get("x-request-id")
                self.assertRegex(rid or "", r"^[0-9a-f]{16}$")
                mine = [l for l in lines if l.get("request_id") == rid]
                self.assertEqual(len(mine), 1, (rid, lines))
                l = mine[0]
                if resp.json and "request_id" in resp.json:
                    self.assertEqual(resp.json["request_id"], rid)
                self.assertRegex(l["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
                self.assertEqual(l["method"], method)
                self.assertEqual(l["path"], path)
                self.assertEqual(l["status"], resp.status)
                self.assertIsInstance(l["status"], int)
                self.assertIsInstance(l["duration_ms"], (int, float))
                self.assertNotIsInstance(l["duration_ms"], bool)
                self.assertGreaterEqual(l["duration_ms"], 0)
                self.assertIn("user_id", l)
                self.assertEqual(l["user_id"], user_id)
            # Request ids are unique.
            self.assertEqual(len({l["request_id"] for l in lines}), len(lines))
            # Query strings (which may carry secrets) never reach the log.
            self.assertNotIn("secret=abc", srv.log_text())
            self.assertNotIn(token, srv.log_text())


if __name__ == "__main__":
    unittest.main()
