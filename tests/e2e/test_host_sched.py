"""Coroutine scheduling: host.sleep yields instead of blocking, the request
deadline (REQUEST_TIMEOUT_MS) stops both waiting and CPU-bound handlers, and a
client that goes away mid-request leaves the server healthy: over HTTP/2 its
pending timer or upstream call is cancelled (never completed into a freed
coroutine) and the request is logged as 499."""
import os
import socket
import subprocess
import sys
import threading
import time
import unittest

from fakes.hostkit import concurrent_get, error_lines, tree_server, wait_for
from fakes.upstream import Upstream


def access_lines(srv, request_id):
    return [l for l in srv.log_lines() if l.get("msg") == "request" and l.get("request_id") == request_id]


class SleepTest(unittest.TestCase):
    def test_100_concurrent_sleeps_on_one_worker(self):
        with tree_server(workers=1) as srv:
            results, elapsed = concurrent_get(srv.port, "/test/sleep?s=0.3", 100)
            print("\n# 100 concurrent host.sleep(0.3), WORKERS=1: %.3f s" % elapsed, file=sys.stderr, flush=True)
            self.assertEqual([s for s, _, _ in results], [200] * 100, results[:2])
            self.assertTrue(all('"slept":0.3' in b for _, _, b in results), results[0])
            self.assertGreaterEqual(elapsed, 0.3, "host.sleep(0.3) returned early")
            self.assertLess(elapsed, 1.5)


class RequestTimeoutTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = tree_server(env={"REQUEST_TIMEOUT_MS": "500", "DRAIN_TIMEOUT_MS": "10000"})

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()

    def test_sleeping_route_answers_504_json(self):
        t0 = time.monotonic()
        r = self.srv.request("GET", "/test/sleep?s=2")
        elapsed = time.monotonic() - t0
        self.assertEqual(r.status, 504, r)
        self.assertEqual(set(r.json), {"error", "request_id"})
        self.assertEqual(r.json["request_id"], r.headers.get("x-request-id"))
        self.assertEqual(r.headers.get("content-type"), "application/json")
        self.assertGreaterEqual(elapsed, 0.45)
        self.assertLess(elapsed, 1.5)
        lines = wait_for(lambda: access_lines(self.srv, r.json["request_id"]), 2)
        self.assertEqual([l["status"] for l in lines or []], [504])

    def test_timeout_during_upstream_call_answers_504(self):
        with Upstream() as up:
            r = self.srv.request("GET", "/test/upstream", headers={"x-upstream-url": up.url("/delay/2000")})
            self.assertEqual(r.status, 504, r)
            self.assertEqual(r.json["request_id"], r.headers.get("x-request-id"))
        self.assertEqual(self.srv.request("GET", "/ping").status, 200)

    def check_cpu_bound(self, path):
        t0 = time.monotonic()
        r = self.srv.request("GET", path, timeout=10)
        elapsed = time.monotonic() - t0
        self.assertIn(r.status, (500, 504), r)
        self.assertIsNotNone(r.json, r)
        self.assertEqual(set(r.json), {"error", "request_id"})
        self.assertEqual(r.json["request_id"], r.headers.get("x-request-id"))
        self.assertLess(elapsed, 3.0, "CPU-bound handler ran %.2f s past a 500 ms limit" % elapsed)
        # The worker is free again and the VM still works.
        self.assertEqual(self.srv.request("GET", "/ping").status, 200)
        self.assertEqual(self.srv.request("GET", "/test/sleep?s=0.01").status, 200)
        lines = wait_for(lambda: access_lines(self.srv, r.json["request_id"]), 2)
        self.assertEqual([l["status"] for l in lines or []], [r.status])

    def test_cpu_bound_route_is_stopped(self):
        self.check_cpu_bound("/test/spin")

    def test_cpu_bound_route_catching_the_deadline_error_is_stopped(self):
        # `while true do pcall(function() while true do end end) end`: a handler
        # must not be able to swallow the deadline and keep the worker forever.
        self.check_cpu_bound("/test/spin_pcall")


def thread_switches(pid, name):
    """Voluntary context switches of the process's thread called `name` (its comm)."""
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                if f.read().strip() != name:
                    continue
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        return int(line.split()[1])
        except FileNotFoundError:
            continue
    return None


class WatchdogPeriodTest(unittest.TestCase):
    """The watchdog wakes every twentieth of the request deadline (50 ms to 1 s)."""

    def test_idle_server_with_default_deadline_wakes_about_once_a_second(self):
        with tree_server() as srv:
            pid = srv.proc.pid
            before = wait_for(lambda: thread_switches(pid, "aicode-watchdog"), 2)
            self.assertIsNotNone(before, "no thread named aicode-watchdog")
            time.sleep(3)
            woke = thread_switches(pid, "aicode-watchdog") - before
            print("\n# watchdog wake-ups in 3 s idle (REQUEST_TIMEOUT_MS=30000): %d" % woke,
                  file=sys.stderr, flush=True)
            # One per second (a 50 ms period would make 60).
            self.assertLessEqual(woke, 5)
            self.assertGreaterEqual(woke, 2)

    def test_cpu_bound_handler_is_stopped_within_a_period_of_a_longer_deadline(self):
        # 4 s deadline: the watchdog wakes every 200 ms.
        with tree_server(env={"REQUEST_TIMEOUT_MS": "4000"}) as srv:
            t0 = time.monotonic()
            r = srv.request("GET", "/test/spin", timeout=15)
            elapsed = time.monotonic() - t0
            self.assertIn(r.status, (500, 504), r)
            self.assertGreaterEqual(elapsed, 3.9)
            self.assertLess(elapsed, 5.0, "stopped %.2f s after a 4 s deadline" % (elapsed - 4))
            self.assertEqual(srv.request("GET", "/ping").status, 200)


class ClientDisconnectTest(unittest.TestCase):
    def test_clients_closing_mid_request(self):
        with tree_server(workers=1, env={"DRAIN_TIMEOUT_MS": "10000"}) as srv, Upstream() as up:
            def abandon(path, extra=""):
                s = socket.create_connection(("127.0.0.1", srv.port))
                s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path, extra)).encode())
                return s

            # A witness that sleeps longer than the abandoned requests: when it
            # answers, every abandoned sleep timer would already have fired.
            box = {}
            witness = threading.Thread(target=lambda: box.update(r=srv.request("GET", "/test/sleep?s=0.7")))
            socks = [abandon("/test/sleep?s=0.5") for _ in range(50)]
            socks += [abandon("/test/upstream", "x-upstream-url: %s\r\n" % up.url("/delay/400"))
                      for _ in range(20)]
            witness.start()
            # Also abandon a request with a half-sent body.
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(b"POST /test/http HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"url\"")
            socks.append(s)
            # Make sure the server has read the requests before the clients go away.
            self.assertTrue(wait_for(lambda: len(up.requests) == 20, 3), "upstream calls did not start")
            for s in socks:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.close()  # RST
            witness.join(5)
            self.assertEqual(box["r"].status, 200)
            self.assertEqual(srv.proc.poll(), None, "server died")
            results, _ = concurrent_get(srv.port, "/test/sleep?s=0.05", 20)
            self.assertEqual([st for st, _, _ in results], [200] * 20)
            self.assertEqual(srv.request("GET", "/ping").status, 200)
            self.assertEqual(error_lines(srv), [])
            # Every request has exactly one access-log line: 200 if it ran to
            # completion (h2o 2.2.5 does not read an HTTP/1 socket while a request is
            # being handled, so it answers into the void), 499 if it was cancelled.
            lines = [l for l in srv.log_lines() if l.get("msg") == "request"]
            sleeps = [l["status"] for l in lines if l["path"] == "/test/sleep"]
            calls = [l["status"] for l in lines if l["path"] == "/test/upstream"]
            self.assertEqual(len(sleeps), 50 + 1 + 20, sleeps)  # abandoned + witness + the 20 after
            self.assertEqual(len(calls), 20, calls)
            self.assertEqual(set(sleeps + calls) - {200, 499}, set())
            # Nothing leaked in the in-flight count: SIGTERM drains at once.
            t0 = time.monotonic()
            self.assertEqual(srv.stop(), 0)
            self.assertLess(time.monotonic() - t0, 3.0, "drain waited for requests that no longer exist")


class Http2CancelTest(unittest.TestCase):
    def test_http2_clients_closing_mid_request_cancel_their_operations(self):
        # HTTP/2 connections are read continuously, so a client going away disposes
        # its streams while their coroutines wait on a timer or an upstream call:
        # the pending operations must be cancelled, never completed into a freed
        # coroutine. (One curl per connection: curl 7.88.1 fails to reuse an h2c
        # connection for a second stream, even against other servers.)
        with tree_server(workers=1, env={"DRAIN_TIMEOUT_MS": "10000"}) as srv, Upstream() as up:
            base = "http://127.0.0.1:%d" % srv.port
            curl = ["curl", "-s", "-o", "/dev/null", "--http2-prior-knowledge", "--max-time", "0.4"]
            procs = [subprocess.Popen(curl + [base + "/test/sleep?s=0.6"]) for _ in range(30)]
            procs += [subprocess.Popen(curl + ["-H", "x-upstream-url: " + up.url("/delay/600"),
                                               base + "/test/upstream"]) for _ in range(10)]
            codes = [p.wait(10) for p in procs]
            self.assertEqual(codes, [28] * 40, "curl should have timed out (28) on every request")
            self.assertEqual(len(up.requests), 10, "the upstream calls never started")
            # Past the moment every cancelled timer and upstream call would have fired.
            r = srv.request("GET", "/test/sleep?s=0.4")
            self.assertEqual(r.status, 200)
            self.assertEqual(srv.proc.poll(), None, "server died")
            results, _ = concurrent_get(srv.port, "/test/upstream", 20,
                                        headers={"x-upstream-url": up.url("/delay/10")})
            self.assertEqual([st for st, _, _ in results], [200] * 20)
            self.assertEqual(error_lines(srv), [])
            # Each abandoned request still has its one access-log line, as 499.
            lines = [l for l in srv.log_lines() if l.get("msg") == "request"]
            abandoned = [l for l in lines if l["path"] in ("/test/sleep", "/test/upstream") and l["status"] == 499]
            self.assertEqual(len(abandoned), 40, [l for l in lines if l["status"] != 200])
            self.assertEqual([l for l in lines if l["status"] not in (200, 499)], [])
            t0 = time.monotonic()
            self.assertEqual(srv.stop(), 0)
            self.assertLess(time.monotonic() - t0, 3.0, "drain waited for cancelled requests")


if __name__ == "__main__":
    unittest.main()
