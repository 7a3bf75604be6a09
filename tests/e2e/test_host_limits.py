"""Connection and request limits: slow clients are cut off after IDLE_TIMEOUT_MS
while others are served, MAX_CONNECTIONS caps concurrent connections, header
count/size limits answer 431 JSON, bodies over MAX_BODY_BYTES answer 413 JSON."""
import http.client
import socket
import threading
import time
import unittest

from fakes.hostkit import tree_server, wait_for


def read_until_closed(sock, timeout):
    """Reads until EOF/reset; returns (bytes, seconds until closed) or (bytes, None)."""
    sock.settimeout(0.05)
    data = b""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return data, time.monotonic() - t0
        if not chunk:
            return data, time.monotonic() - t0
        data += chunk
    return data, None


class SlowClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = tree_server(env={"IDLE_TIMEOUT_MS": "1000", "MAX_HEADER_COUNT": "20",
                                   "MAX_HEADER_BYTES": "2048", "MAX_BODY_BYTES": "4096"})

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()

    def test_slowloris_is_disconnected_while_others_are_served(self):
        request = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
        outcome = {}

        def slowloris(i):
            s = socket.create_connection(("127.0.0.1", self.srv.port))
            s.settimeout(0.05)
            t0 = time.monotonic()
            try:
                for b in request:  # one byte every 250 ms: never a full header block
                    s.send(bytes([b]))
                    deadline = time.monotonic() + 0.25
                    while time.monotonic() < deadline:
                        try:
                            if s.recv(4096) == b"":
                                outcome[i] = ("closed", time.monotonic() - t0)
                                return
                        except socket.timeout:
                            pass
                    if time.monotonic() - t0 > 4:
                        outcome[i] = ("still open", time.monotonic() - t0)
                        return
            except (ConnectionResetError, BrokenPipeError):
                outcome[i] = ("closed", time.monotonic() - t0)
            finally:
                s.close()

        threads = [threading.Thread(target=slowloris, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        served = 0
        while any(t.is_alive() for t in threads):
            t0 = time.monotonic()
            self.assertEqual(self.srv.request("GET", "/ping").status, 200)
            self.assertLess(time.monotonic() - t0, 0.5)
            served += 1
            time.sleep(0.05)
        self.assertGreater(served, 5)
        self.assertEqual(len(outcome), 10)
        for state, after in outcome.values():
            self.assertEqual(state, "closed", outcome)
            self.assertGreaterEqual(after, 0.9)
            self.assertLess(after, 2.0, "slow client kept its connection %.2f s" % after)

    def test_slow_body_is_disconnected(self):
        s = socket.create_connection(("127.0.0.1", self.srv.port))
        s.sendall(b"POST /test/http HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{")
        t0 = time.monotonic()
        closed_after = None
        s.settimeout(0.2)
        try:
            while time.monotonic() - t0 < 4:
                s.send(b" ")
                try:
                    if s.recv(4096) == b"":
                        break
                except socket.timeout:
                    pass
        except (ConnectionResetError, BrokenPipeError):
            pass
        closed_after = time.monotonic() - t0
        s.close()
        self.assertLess(closed_after, 2.0, "a client trickling its body kept the connection")

    def test_idle_keep_alive_connection_is_closed(self):
        s = socket.create_connection(("127.0.0.1", self.srv.port))
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        data, after = read_until_closed(s, 4)
        s.close()
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), data[:100])
        self.assertIsNotNone(after, "idle keep-alive connection never closed")
        self.assertGreaterEqual(after, 0.9)
        self.assertLess(after, 2.0)

    def check_431(self, headers):
        r = self.srv.request("GET", "/ping", headers=headers)
        self.assertEqual(r.status, 431, r)
        self.assertEqual(set(r.json or {}), {"error", "request_id"}, r)
        self.assertEqual(r.json["request_id"], r.headers.get("x-request-id"))
        self.assertEqual(r.headers.get("content-type"), "application/json")

    def test_header_count_limit(self):
        # http.client adds Host and Accept-Encoding: 14 + 2 = 16 <= 20.
        self.assertEqual(self.srv.request("GET", "/ping", headers={"x-h%d" % i: "v" for i in range(14)}).status, 200)
        self.check_431({"x-h%d" % i: "v" for i in range(25)})

    def test_header_bytes_limit(self):
        self.assertEqual(self.srv.request("GET", "/ping", headers={"x-big": "a" * 1000}).status, 200)
        self.check_431({"x-big": "a" * 3000})
        self.check_431({"x-h%d" % i: "a" * 150 for i in range(15)})  # many medium ones add up

    def test_body_limit_413_json(self):
        ok = self.srv.request("POST", "/test/http", raw=b'{"url": "' + b"a" * 4000 + b'"}',
                              headers={"Content-Type": "application/json"})
        self.assertEqual(ok.status, 200, ok)  # under the limit: reaches the route
        for extra in (b"Content-Length: 5000\r\n", b"Transfer-Encoding: chunked\r\n"):
            s = socket.create_connection(("127.0.0.1", self.srv.port))
            s.sendall(b"POST /test/http HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra + b"\r\n")
            try:
                if b"chunked" in extra:
                    s.sendall(b"1400\r\n" + b"x" * 5120 + b"\r\n")
                else:
                    s.sendall(b"x" * 5000)
            except (BrokenPipeError, ConnectionResetError):
                pass
            data, _ = read_until_closed(s, 3)
            s.close()
            head, _, body = data.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 413"), (extra, data[:200]))
            self.assertIn(b"application/json", head.lower())
            self.assertIn(b'"error"', body)
            self.assertIn(b'"request_id"', body)


class MaxConnectionsTest(unittest.TestCase):
    def test_connection_21_is_closed_while_20_work(self):
        with tree_server(env={"MAX_CONNECTIONS": "20", "IDLE_TIMEOUT_MS": "10000"}) as srv:
            conns = []
            try:
                for _ in range(20):
                    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
                    c.request("GET", "/ping")
                    r = c.getresponse()
                    r.read()
                    self.assertEqual(r.status, 200)
                    conns.append(c)
                # The 21st is accepted by the kernel and closed by the server at once.
                s = socket.create_connection(("127.0.0.1", srv.port))
                try:
                    s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass
                data, after = read_until_closed(s, 3)
                s.close()
                self.assertEqual(data, b"", "connection over MAX_CONNECTIONS was served")
                self.assertIsNotNone(after)
                # The first 20 keep working.
                for c in conns:
                    c.request("GET", "/ping")
                    r = c.getresponse()
                    r.read()
                    self.assertEqual(r.status, 200)
                # Freeing one slot lets a new connection in.
                conns.pop().close()

                def new_conn_served():
                    try:
                        return srv.request("GET", "/ping", timeout=2).status == 200
                    except (OSError, http.client.HTTPException):
                        return False
                self.assertTrue(wait_for(new_conn_served, 3), "slot not released after a close")
            finally:
                for c in conns:
                    c.close()


if __name__ == "__main__":
    unittest.main()
