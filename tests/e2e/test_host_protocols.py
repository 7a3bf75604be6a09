"""Protocols: h2c with prior knowledge, TLS with HTTP/1.1 and HTTP/2 over ALPN
(self-signed certificate made with the openssl CLI), and TLS misconfiguration
refused at start with a readable message."""
import http.client
import json
import os
import ssl
import subprocess
import unittest

from harness import Server
from fakes.hostkit import tree_server, wait_for


def echo(base, *args):
    """POSTs to /test/echo with curl; returns (http_version, request object as the handler saw it)."""
    rc, tail, body, err = curl(*args, "--path-as-is", "-X", "POST", "--data-binary", "raw body",
                               "-H", "Content-Type: text/plain", "-H", "X-Dup: a", "-H", "X-Dup: b",
                               "-H", "X-Mixed-CASE: v", base + "/test/./echo?a=1&b=%20x")
    assert rc == 0, err
    return tail, json.loads(body)


def check_request_object(test, req):
    """The fields every protocol must hand the handler the same way (server.h)."""
    test.assertEqual(req["method"], "POST")
    test.assertEqual(req["path"], "/test/echo")  # normalised, without the query
    test.assertEqual(req["query"], "a=1&b=%20x")  # raw
    test.assertEqual(req["body"], "raw body")
    test.assertEqual(req["remote_addr"], "127.0.0.1")
    test.assertRegex(req["request_id"], r"^[0-9a-f]{16}$")
    test.assertEqual(req["headers"]["x-dup"], "a, b")
    test.assertEqual(req["headers"]["x-mixed-case"], "v")
    test.assertEqual([k for k in req["headers"] if k != k.lower()], [])


def curl(*args):
    r = subprocess.run(["curl", "-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_version} %{http_code}"]
                       + list(args), capture_output=True, text=True, timeout=10)
    body, _, tail = r.stdout.rpartition("\n")
    return r.returncode, tail, body, r.stderr


class H2cTest(unittest.TestCase):
    def test_h2c_prior_knowledge(self):
        with tree_server() as srv:
            rc, tail, body, err = curl("--http2-prior-knowledge", "http://127.0.0.1:%d/ping" % srv.port)
            self.assertEqual(rc, 0, err)
            self.assertEqual(tail, "2 200")
            self.assertIn('"pong"', body)
            # HTTP/1.1 on the same port still works.
            rc, tail, _, err = curl("--http1.1", "http://127.0.0.1:%d/ping" % srv.port)
            self.assertEqual((rc, tail), (0, "1.1 200"), err)
            # A 404 over h2 is JSON too.
            rc, tail, body, _ = curl("--http2-prior-knowledge", "http://127.0.0.1:%d/api/nope" % srv.port)
            self.assertEqual(tail, "2 404")
            self.assertIn('"request_id"', body)
            # The request object over h2c.
            tail, req = echo("http://127.0.0.1:%d" % srv.port, "--http2-prior-knowledge")
            self.assertEqual(tail, "2 200")
            self.assertEqual((req["scheme"], req["version"]), ("http", "HTTP/2"))
            check_request_object(self, req)
            tail, req = echo("http://127.0.0.1:%d" % srv.port, "--http1.1")
            self.assertEqual((req["scheme"], req["version"]), ("http", "HTTP/1.1"))
            check_request_object(self, req)


class TlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = tree_server(start=False)
        d = cls.srv.tmp
        cls.cert, cls.key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", cls.key, "-out", cls.cert, "-days", "1", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                       check=True, capture_output=True, timeout=30)
        cls.srv.env.update({"TLS_CERT": cls.cert, "TLS_KEY": cls.key, "MAX_CONNECTIONS": "8"})
        ctx = ssl.create_default_context(cafile=cls.cert)

        def https_request(method, path, **kw):  # the harness's start() polls with this
            conn = http.client.HTTPSConnection("127.0.0.1", cls.srv.port, timeout=5, context=ctx)
            try:
                conn.request(method, path)
                resp = conn.getresponse()
                resp.read()
                return resp
            finally:
                conn.close()
        cls.srv.request = https_request
        cls.srv.start()

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()

    def test_https_http1_and_h2_via_alpn(self):
        url = "https://127.0.0.1:%d/ping" % self.srv.port
        rc, tail, body, err = curl("-k", "--http1.1", url)
        self.assertEqual((rc, tail), (0, "1.1 200"), err)
        self.assertIn('"pong"', body)
        rc, tail, body, err = curl("-k", "--http2", url)
        self.assertEqual((rc, tail), (0, "2 200"), err)
        self.assertIn('"pong"', body)
        # Verified against the generated certificate, not just -k.
        rc, tail, _, err = curl("--cacert", self.cert, "--http2", url)
        self.assertEqual((rc, tail), (0, "2 200"), err)

    def test_https_request_object(self):
        base = "https://127.0.0.1:%d" % self.srv.port
        tail, req = echo(base, "-k", "--http1.1")
        self.assertEqual(tail, "1.1 200")
        self.assertEqual((req["scheme"], req["version"]), ("https", "HTTP/1.1"))
        check_request_object(self, req)
        tail, req = echo(base, "-k", "--http2")
        self.assertEqual(tail, "2 200")
        self.assertEqual((req["scheme"], req["version"]), ("https", "HTTP/2"))
        check_request_object(self, req)

    def test_failed_handshakes_do_not_leak_connection_slots(self):
        # MAX_CONNECTIONS is 8 on this server: 30 connections that never complete a
        # TLS handshake (plain HTTP, garbage, immediate close) must all give their
        # slot back, or the next https request would be refused.
        import socket
        for i in range(30):
            s = socket.create_connection(("127.0.0.1", self.srv.port))
            if i % 3 == 0:
                s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            elif i % 3 == 1:
                s.sendall(b"\x16\x03\x01\x00\x05garbage")
            s.close()

        def https_ok():
            rc, tail, _, _ = curl("-k", "--http2", "https://127.0.0.1:%d/ping" % self.srv.port)
            return (rc, tail) == (0, "2 200")
        self.assertTrue(wait_for(https_ok, 3), "connection slots not released after failed handshakes")
        rc, tail, _, _ = curl("http://127.0.0.1:%d/ping" % self.srv.port)
        self.assertNotEqual(tail.split(" ")[-1], "200")
        for _ in range(10):  # more than MAX_CONNECTIONS, one after another
            rc, tail, _, err = curl("-k", "--http2", "https://127.0.0.1:%d/ping" % self.srv.port)
            self.assertEqual((rc, tail), (0, "2 200"), err)


class TlsConfigTest(unittest.TestCase):
    def run_serve(self, env):
        srv = Server(start=False, env=env)
        try:
            r = subprocess.run([os.path.join(os.path.dirname(__file__), "..", "..", "bin", "aicode"), "serve"],
                               env=srv.env, capture_output=True, text=True, timeout=10)
            return r.returncode, r.stderr + srv.log_text()
        finally:
            srv.close()

    def test_cert_without_key_refused(self):
        with Server(start=False) as tmp:
            cert = os.path.join(tmp.tmp, "cert.pem")
            with open(cert, "w") as f:
                f.write("not really a cert\n")
            rc, out = self.run_serve({"TLS_CERT": cert})
        self.assertNotEqual(rc, 0)
        self.assertIn("TLS_KEY", out)
        self.assertIn("TLS_CERT", out)

    def test_key_without_cert_refused(self):
        with Server(start=False) as tmp:
            key = os.path.join(tmp.tmp, "key.pem")
            with open(key, "w") as f:
                f.write("x\n")
            rc, out = self.run_serve({"TLS_KEY": key})
        self.assertNotEqual(rc, 0)
        self.assertIn("TLS_CERT", out)

    def test_unreadable_or_garbage_cert_refused(self):
        rc, out = self.run_serve({"TLS_CERT": "/nonexistent/cert.pem", "TLS_KEY": "/nonexistent/key.pem"})
        self.assertNotEqual(rc, 0)
        self.assertIn("/nonexistent/cert.pem", out)
        with Server(start=False) as tmp:
            cert, key = os.path.join(tmp.tmp, "c.pem"), os.path.join(tmp.tmp, "k.pem")
            for p in (cert, key):
                with open(p, "w") as f:
                    f.write("garbage\n")
            rc, out = self.run_serve({"TLS_CERT": cert, "TLS_KEY": key})
        self.assertNotEqual(rc, 0)
        self.assertIn("TLS_CERT " + cert, out)  # which variable, which file

    def test_key_not_matching_cert_refused(self):
        with Server(start=False) as tmp:
            cert, key, other = (os.path.join(tmp.tmp, n) for n in ("c.pem", "k.pem", "other.pem"))
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                            "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=x"],
                           check=True, capture_output=True, timeout=30)
            subprocess.run(["openssl", "genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                            "-out", other], check=True, capture_output=True, timeout=30)
            rc, out = self.run_serve({"TLS_CERT": cert, "TLS_KEY": other})
        self.assertNotEqual(rc, 0)
        self.assertIn("TLS_KEY", out)
        self.assertIn(other, out)


if __name__ == "__main__":
    unittest.main()
