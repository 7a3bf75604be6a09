"""A fake Supabase Auth server for the JWKS verification tests.

    with FakeSupabaseAuth() as sb:
        env = {"SUPABASE_URL": sb.url}          # http://127.0.0.1:<port>
        tok = sb.sign({"sub": uid, "role": "authenticated", ...})   # ES256, current kid
        sb.rotate()                              # new EC P-256 key (new kid) is served
        sb.fault = "500" | "garbage" | None      # fault injection on the JWKS endpoint
        sb.jwks_requests                         # how many times the JWKS was fetched

Serves GET /auth/v1/.well-known/jwks.json with the public halves of the current keys
(EC P-256, "alg": "ES256", "use": "sig"). Anything else is a 404.
"""
import base64
import http.server
import json
import socketserver
import threading
import uuid

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

JWKS_PATH = "/auth/v1/.well-known/jwks.json"


def _b64url_uint(n, length=32):
    return base64.urlsafe_b64encode(n.to_bytes(length, "big")).rstrip(b"=").decode()


def new_ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key, kid):
    nums = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": _b64url_uint(nums.x), "y": _b64url_uint(nums.y),
            "kid": kid, "alg": "ES256", "use": "sig"}


def sign_es256(claims, key, kid):
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims, key, algorithm="ES256", headers=headers)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status, body, ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        fake = self.server.fake
        if self.path.split("?")[0] != JWKS_PATH:
            self._send(404, b'{"error":"not found"}')
            return
        with fake.lock:
            fake.jwks_requests += 1
            fault = fake.fault
            doc = {"keys": [public_jwk(k, kid) for kid, k in fake.served]}
        if fault == "500":
            self._send(500, b'{"error":"internal"}')
        elif fault == "garbage":
            self._send(200, b"<html>this is not a JWKS {{{", "text/html")
        else:
            self._send(200, json.dumps(doc).encode())


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 64


class FakeSupabaseAuth:
    def __init__(self):
        self.lock = threading.Lock()
        self.fault = None
        self.jwks_requests = 0
        self.served = []  # [(kid, private key)] published in the JWKS
        self.rotate()
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.fake = self
        self.port = self.httpd.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def kid(self):
        return self.served[-1][0]

    @property
    def key(self):
        return self.served[-1][1]

    def rotate(self, keep_old=False):
        """Publishes a fresh key with a fresh kid; the old one is dropped unless keep_old."""
        kid = "kid-" + uuid.uuid4().hex[:12]
        with self.lock:
            entry = (kid, new_ec_key())
            self.served = (self.served if keep_old else []) + [entry]
        return kid

    def sign(self, claims, kid=None, key=None):
        """Signs with the current key (or `key`), header kid = current kid (or `kid`)."""
        return sign_es256(claims, key or self.key, kid if kid is not None else self.kid)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
