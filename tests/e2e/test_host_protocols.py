"""Protocols: h2c with prior knowledge, TLS with HTTP/1.1 and HTTP/2 over ALPN
(self-signed certificate made with the openssl CLI), and TLS misconfiguration
refused at start with a readable message."""
import http.client
import os
import ssl
import subprocess
import unittest

from harness import Server


def curl(*args):
    r = subprocess.run(["curl", "-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_version} %{http_code}"]
                       + list(args), capture_output=True, text=True, timeout=10)
    body, _, tail = r.stdout.rpartition("\n")
    return r.returncode, tail, body, r.stderr


class H2cTest(unittest.TestCase):
    def test_h2c_prior_knowledge(self):
        with Server() as srv:
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


class TlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server(start=False)
        d = cls.srv.tmp
        cls.cert, cls.key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", cls.key, "-out", cls.cert, "-days", "1", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                       check=True, capture_output=True, timeout=30)
        cls.srv.env.update({"TLS_CERT": cls.cert, "TLS_KEY": cls.key})
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

    def test_https_request_sees_scheme(self):
        r = self.srv.request("GET", "/ping")
        self.assertEqual(r.status, 200)

    def test_plain_http_on_tls_port_is_not_served(self):
        rc, tail, _, _ = curl("http://127.0.0.1:%d/ping" % self.srv.port)
        self.assertNotEqual(tail.split(" ")[-1], "200")


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
        self.assertIn("TLS", out)


if __name__ == "__main__":
    unittest.main()
