"""E2E: /api/auth/token, /api/auth/refresh, /api/auth/verify, the `aicode token` CLI and
bearer-token verification on authenticated routes (seed-contract §1.0, §1.2; issue #2).

Modes covered: no Supabase (tokens only from the CLI), Supabase HS256
(SUPABASE_JWT_SECRET), Supabase JWKS (SUPABASE_URL, against tests/e2e/fakes/supabase_auth.py)
and the legacy AUTH_TRUST_CLIENT_USER_ID=1.
"""
import base64
import hashlib
import hmac
import json
import os
import subprocess
import time
import unittest

import jwt

from cryptography.hazmat.primitives import serialization

from fakes.supabase_auth import FakeSupabaseAuth, new_ec_key, public_jwk
from harness import BIN, ROOT, Server, free_port, new_user, sqlite_only

SUPABASE_SECRET = "supabase-test-secret-0123456789-abcdefghij"  # 42 bytes


# -- helpers ------------------------------------------------------------------------

def b64url(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(obj):
    return b64url(json.dumps(obj, separators=(",", ":")))


def unverified_claims(token):
    return jwt.decode(token, options={"verify_signature": False})


def hs_token(claims, secret, alg="HS256", header=None):
    """Signs by hand (PyJWT would refuse some of the shapes we need)."""
    h = {"alg": alg, "typ": "JWT"}
    if header:
        h.update(header)
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signing_input = b64url_json(h) + "." + b64url_json(claims)
    sig = hmac.new(secret.encode() if isinstance(secret, str) else secret, signing_input.encode(),
                   digest).digest()
    return signing_input + "." + b64url(sig)


def own_claims(user_id, typ="access", exp_delta=600, **extra):
    now = int(time.time())
    c = {"user_id": user_id, "type": typ, "exp": now + exp_delta, "iat": now}
    c.update(extra)
    return {k: v for k, v in c.items() if v is not None}


def supabase_claims(sub, exp_delta=600, **extra):
    now = int(time.time())
    c = {"sub": sub, "role": "authenticated", "aud": "authenticated", "exp": now + exp_delta,
         "iat": now, "email": "someone@example.com"}
    c.update(extra)
    return {k: v for k, v in c.items() if v is not None}


def db_user(srv, user_id):
    rows = srv.sql("SELECT * FROM users WHERE CAST(id AS TEXT) = ?", (user_id,))
    return rows[0] if rows else None


class ApiAssertions(unittest.TestCase):
    def assertJsonError(self, r, status, message=None):
        self.assertEqual(r.status, status, r)
        self.assertTrue(r.headers.get("content-type", "").startswith("application/json"), r.headers)
        self.assertIsInstance(r.json, dict, r)
        self.assertEqual(set(r.json), {"error", "request_id"}, r)
        self.assertIsInstance(r.json["error"], str)
        self.assertTrue(r.json["error"])
        self.assertEqual(r.headers.get("x-request-id"), r.json["request_id"])
        if message is not None:
            self.assertEqual(r.json["error"], message, r)

    def assertTokenPair(self, body, user_id):
        self.assertEqual(set(body), {"access_token", "refresh_token", "expires_in"})
        self.assertIs(type(body["expires_in"]), int)
        self.assertEqual(body["expires_in"], 3600)
        access, refresh = unverified_claims(body["access_token"]), unverified_claims(body["refresh_token"])
        self.assertEqual(access["user_id"], user_id)
        self.assertEqual(access["type"], "access")
        self.assertEqual(refresh["user_id"], user_id)
        self.assertEqual(refresh["type"], "refresh")
        for c in (access, refresh):
            self.assertIs(type(c["exp"]), int)
            self.assertIs(type(c["iat"]), int)
        self.assertEqual(access["exp"] - access["iat"], 3600)
        self.assertEqual(refresh["exp"] - refresh["iat"], 7 * 86400)
        self.assertEqual(jwt.get_unverified_header(body["access_token"])["alg"], "HS256")


# -- no Supabase: tokens come from the CLI ------------------------------------------

class CliAndOwnTokenTests(ApiAssertions):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server()
        with open(os.path.join(cls.srv.data_dir, "jwt_secret")) as f:
            cls.secret = f.read().strip()

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()

    def verify(self, token=None, header=None, path="/api/auth/verify"):
        h = {}
        if header is not None:
            h["Authorization"] = header
        elif token is not None:
            h["Authorization"] = "Bearer " + token
        return self.srv.request("GET", path, headers=h)

    def assertRejected(self, message, token=None, header=None):
        """Rejected with exactly `message` on two different authenticated routes."""
        for path in ("/api/auth/verify", "/api/projects"):
            r = self.verify(token=token, header=header, path=path)
            self.assertJsonError(r, 401, message)

    # CLI ----------------------------------------------------------------------
    def test_cli_token_output_shape_and_user_row(self):
        user = new_user()
        self.assertIsNone(db_user(self.srv, user))
        # With Supabase, users come from Supabase Auth (its trigger makes the row): the
        # CLI then finds the row instead of creating it.
        self.srv.sign_up(user)
        r = self.srv.cli("token", "--user", user)
        self.assertEqual(r.returncode, 0, r.stderr)
        body = json.loads(r.stdout)
        self.assertTokenPair(body, user)
        self.assertIn('"expires_in":3600', r.stdout.replace(" ", ""))
        row = db_user(self.srv, user)
        self.assertIsNotNone(row, "aicode token must create the user row")
        self.assertEqual(row["id"], user)
        # A second call works and does not duplicate the row.
        r2 = self.srv.cli("token", "--user=" + user)
        self.assertEqual(r2.returncode, 0, r2.stderr)
        self.assertTokenPair(json.loads(r2.stdout), user)
        n = self.srv.sql("SELECT count(*) AS n FROM users WHERE id = ?", (user,))[0]["n"]
        self.assertEqual(n, 1)

    def test_cli_token_is_accepted_by_the_server(self):
        user = new_user()
        r = self.verify(self.srv.token(user))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json, {"valid": True, "user_id": user})

    def test_cli_help_for_each_command(self):
        for cmd in ("serve", "token", "migrate", "check-config"):
            r = self.srv.cli(cmd, "--help")
            self.assertEqual(r.returncode, 0, (cmd, r.stderr))
            self.assertIn("usage: aicode " + cmd, r.stdout)
        r = self.srv.cli("--help")
        self.assertEqual(r.returncode, 0)
        for cmd in ("serve", "token", "migrate", "check-config"):
            self.assertIn(cmd, r.stdout)
        r = self.srv.cli("no-such-command")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("unknown command", r.stderr)

    def test_cli_token_bad_user(self):
        for bad in ("abc", "", "not-a-uuid-at-all", "' OR 1=1 --", "12345678-1234-1234-1234-12345678901"):
            r = self.srv.cli("token", "--user", bad)
            self.assertNotEqual(r.returncode, 0, bad)
            self.assertEqual(r.stdout.strip(), "", bad)
            self.assertIn("UUID", r.stderr, bad)
            self.assertIsNone(db_user(self.srv, bad))
        r = self.srv.cli("token")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--user is required", r.stderr)
        r = self.srv.cli("token", "--bogus")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--bogus", r.stderr)

    def test_no_trust_warning_by_default(self):
        self.assertNotIn("AUTH_TRUST_CLIENT_USER_ID", self.srv.log_text())

    # POST /api/auth/token without Supabase ---------------------------------------
    # (The Supabase store needs SUPABASE_URL, which enables Supabase auth.)
    @sqlite_only
    def test_http_token_issuance_refused_without_supabase(self):
        user = new_user()
        r = self.srv.request("POST", "/api/auth/token", body={"user_id": user})
        self.assertJsonError(r, 403)
        self.assertIn("aicode token", r.json["error"])
        self.assertNotIn("access_token", r.body)
        self.assertIsNone(db_user(self.srv, user), "a refused exchange must not create the user")
        # Even a (forged) bearer token does not help.
        r = self.srv.request("POST", "/api/auth/token", body={"user_id": user},
                             token=hs_token(own_claims(user), self.secret))
        self.assertJsonError(r, 403)

    def test_token_request_validation(self):
        cases = [
            ("missing body", dict()),
            ("empty object", dict(body={})),
            ("non-JSON", dict(raw=b"user_id=abc", headers={"Content-Type": "application/json"})),
            ("truncated JSON", dict(raw=b'{"user_id": "', headers={"Content-Type": "application/json"})),
            ("array body", dict(body=[new_user()])),
            ("string body", dict(body=new_user())),
            ("user_id int", dict(body={"user_id": 5})),
            ("user_id null", dict(body={"user_id": None})),
            ("user_id object", dict(body={"user_id": {"id": new_user()}})),
            ("user_id list", dict(body={"user_id": [new_user()]})),
            ("user_id not a UUID", dict(body={"user_id": "abc"})),
            ("user_id UUID-ish", dict(body={"user_id": new_user() + "x"})),
            ("user_id with injection", dict(body={"user_id": "' OR '1'='1"})),
        ]
        for name, kw in cases:
            with self.subTest(name):
                r = self.srv.request("POST", "/api/auth/token", **kw)
                self.assertJsonError(r, 400)

    # /api/auth/verify and /api/auth/refresh -----------------------------------
    def test_verify_success_shape(self):
        user = new_user()
        r = self.verify(self.srv.token(user))
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json, {"valid": True, "user_id": user})
        self.assertEqual(r.headers.get("content-type"), "application/json")
        # The scheme is case-insensitive, as in the original.
        r = self.verify(header="bearer " + self.srv.token(user))
        self.assertEqual(r.status, 200, r)

    def test_refresh_returns_new_access_token(self):
        user = new_user()
        pair = self.srv.tokens(user)
        time.sleep(1.05)  # a new iat, so the new token differs from the CLI's
        r = self.srv.request("POST", "/api/auth/refresh", body={"refresh_token": pair["refresh_token"]})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(set(r.json), {"access_token", "expires_in"})
        self.assertIs(type(r.json["expires_in"]), int)
        self.assertEqual(r.json["expires_in"], 3600)
        new_access = r.json["access_token"]
        self.assertNotEqual(new_access, pair["access_token"])
        claims = jwt.decode(new_access, self.secret, algorithms=["HS256"])
        self.assertEqual(claims["user_id"], user)
        self.assertEqual(claims["type"], "access")
        self.assertEqual(claims["exp"] - claims["iat"], 3600)
        v = self.verify(new_access)
        self.assertEqual(v.status, 200)
        self.assertEqual(v.json["user_id"], user)

    def test_refresh_validation_and_errors(self):
        user = new_user()
        pair = self.srv.tokens(user)
        for name, kw in [("missing body", {}), ("empty object", dict(body={})),
                         ("not a string", dict(body={"refresh_token": 12})),
                         ("array", dict(body=[pair["refresh_token"]])),
                         ("bad JSON", dict(raw=b"{", headers={"Content-Type": "application/json"}))]:
            with self.subTest(name):
                self.assertJsonError(self.srv.request("POST", "/api/auth/refresh", **kw), 400)
        r = self.srv.request("POST", "/api/auth/refresh", body={"refresh_token": "garbage"})
        self.assertJsonError(r, 401, "Invalid token")
        # The access token is not a refresh token.
        r = self.srv.request("POST", "/api/auth/refresh", body={"refresh_token": pair["access_token"]})
        self.assertJsonError(r, 401, "Invalid token type. Expected refresh")
        # Expired refresh token.
        r = self.srv.request("POST", "/api/auth/refresh",
                             body={"refresh_token": hs_token(own_claims(user, "refresh", -120), self.secret)})
        self.assertJsonError(r, 401, "Token has expired")
        # Refresh token for a user that does not exist.
        r = self.srv.request("POST", "/api/auth/refresh",
                             body={"refresh_token": hs_token(own_claims(new_user(), "refresh"), self.secret)})
        self.assertJsonError(r, 401, "User not found")
        # Signed with another secret.
        r = self.srv.request("POST", "/api/auth/refresh",
                             body={"refresh_token": hs_token(own_claims(user, "refresh"), "x" * 64)})
        self.assertJsonError(r, 401, "Signature verification failed")

    # Bad bearer tokens on authenticated routes ----------------------------------
    def test_missing_header(self):
        self.assertRejected("Missing authorization header")

    def test_wrong_scheme(self):
        self.assertRejected("Invalid authentication scheme", header="Basic x")
        self.assertRejected("Invalid authentication scheme", header="Token " + self.srv.token(new_user()))

    def test_bad_header_format(self):
        self.assertRejected("Invalid authorization header format", header="Bearer")
        self.assertRejected("Invalid authorization header format", header="Bearer a b")
        tok = self.srv.token(new_user())
        self.assertRejected("Invalid authorization header format", header="Bearer " + tok + " extra")

    def test_garbage_token(self):
        for garbage in ("garbage", "a.b.c", "eyJ.eyJ.sig", "...", "x" * 500):
            with self.subTest(garbage[:20]):
                self.assertRejected("Invalid token", token=garbage)

    def test_tampered_payload(self):
        victim = new_user()
        self.srv.tokens(victim)  # exists, so only the signature can stop this
        tok = self.srv.token(new_user())
        h, p, s = tok.split(".")
        claims = unverified_claims(tok)
        claims["user_id"] = victim
        self.assertRejected("Signature verification failed", token=h + "." + b64url_json(claims) + "." + s)

    def test_tampered_signature(self):
        tok = self.srv.token(new_user())
        h, p, s = tok.split(".")
        sig = bytearray(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
        sig[0] ^= 0x01
        self.assertRejected("Signature verification failed", token=h + "." + p + "." + b64url(bytes(sig)))
        # Signed with a different secret.
        user = new_user()
        self.srv.tokens(user)
        self.assertRejected("Signature verification failed", token=hs_token(own_claims(user), "y" * 48))

    def test_expired_beyond_leeway(self):
        user = new_user()
        self.srv.tokens(user)
        self.assertRejected("Token has expired", token=hs_token(own_claims(user, exp_delta=-45), self.secret))
        self.assertRejected("Token has expired", token=hs_token(own_claims(user, exp_delta=-3600), self.secret))

    def test_expired_within_leeway_accepted(self):
        user = new_user()
        self.srv.tokens(user)
        r = self.verify(hs_token(own_claims(user, exp_delta=-10), self.secret))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json, {"valid": True, "user_id": user})

    def test_token_that_expires_while_cached_is_refused(self):
        # Each worker caches verified access tokens (lualib/app/auth.lua): a token used
        # inside its leeway must still be refused once the leeway has passed.
        user = new_user()
        self.srv.tokens(user)
        token = hs_token(own_claims(user, exp_delta=-27), self.secret)  # 3 s of leeway left
        for _ in range(6):  # reach every worker, so each has it cached
            r = self.verify(token)
            self.assertEqual(r.status, 200, r)
        time.sleep(4.2)
        for _ in range(6):
            self.assertRejected("Token has expired", token=token)

    def test_alg_none(self):
        user = new_user()
        self.srv.tokens(user)
        payload = b64url_json(own_claims(user))
        for alg in ("none", "None", "NONE"):
            header = b64url_json({"alg": alg, "typ": "JWT"})
            for tok in (header + "." + payload + ".", header + "." + payload):
                with self.subTest(tok=tok[:30]):
                    r = self.verify(tok)
                    self.assertJsonError(r, 401)
                    self.assertNotIn(user, r.body)

    def test_other_algorithm_with_real_secret(self):
        user = new_user()
        self.srv.tokens(user)
        for alg in ("HS512", "HS384"):
            self.assertRejected("Algorithm not allowed", token=hs_token(own_claims(user), self.secret, alg=alg))
        # PyJWT signing agrees with the hand-made token.
        self.assertRejected("Algorithm not allowed",
                            token=jwt.encode(own_claims(user), self.secret, algorithm="HS512"))
        # An asymmetric token (alg confusion attempt) is refused too.
        es = jwt.encode(own_claims(user), new_ec_key(), algorithm="ES256")
        self.assertRejected("Algorithm not allowed", token=es)

    def test_refresh_token_as_access(self):
        pair = self.srv.tokens(new_user())
        self.assertRejected("Invalid token type. Expected access", token=pair["refresh_token"])

    def test_missing_or_wrong_type_claim(self):
        user = new_user()
        self.srv.tokens(user)
        claims = own_claims(user)
        del claims["type"]
        self.assertRejected("Invalid token type. Expected access", token=hs_token(claims, self.secret))
        self.assertRejected("Invalid token type. Expected access",
                            token=hs_token(own_claims(user, typ="admin"), self.secret))

    def test_user_not_in_database(self):
        ghost = new_user()
        self.assertRejected("User not found", token=hs_token(own_claims(ghost), self.secret))
        self.assertIsNone(db_user(self.srv, ghost), "verification must not create users")

    def test_missing_user_id_claim(self):
        claims = own_claims(new_user())
        del claims["user_id"]
        for c in (claims, dict(claims, user_id=""), dict(claims, user_id=42), dict(claims, user_id=None)):
            with self.subTest(c.get("user_id", "absent")):
                r = self.verify(hs_token(c, self.secret))
                self.assertJsonError(r, 401)
                self.assertIn("user_id", r.json["error"].lower().replace(" ", "_"))

    def test_missing_exp_claim(self):
        user = new_user()
        self.srv.tokens(user)
        claims = own_claims(user)
        del claims["exp"]
        r = self.verify(hs_token(claims, self.secret))
        self.assertJsonError(r, 401)
        # A non-numeric exp is not "no expiry" either.
        r = self.verify(hs_token(dict(claims, exp="never"), self.secret))
        self.assertJsonError(r, 401)


# -- Supabase HS256 (SUPABASE_JWT_SECRET) -------------------------------------------

class SupabaseHs256Tests(ApiAssertions):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server(env={"SUPABASE_JWT_SECRET": SUPABASE_SECRET})

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()

    def exchange(self, user_id, supabase_token):
        return self.srv.request("POST", "/api/auth/token", body={"user_id": user_id}, token=supabase_token)

    def sb(self, claims, secret=SUPABASE_SECRET):
        return jwt.encode(claims, secret, algorithm="HS256")

    def test_exchange_success_creates_user(self):
        user = new_user()
        self.assertIsNone(db_user(self.srv, user))
        # SQLite: the first exchange creates the row. Supabase: Supabase Auth's sign-up did.
        self.srv.sign_up(user, "alice@example.com")
        r = self.exchange(user, self.sb(supabase_claims(user, email="alice@example.com")))
        self.assertEqual(r.status, 200, r)
        self.assertTokenPair(r.json, user)
        row = db_user(self.srv, user)
        self.assertIsNotNone(row, "the first exchange creates the user row")
        self.assertEqual(row["email"], "alice@example.com")
        v = self.srv.request("GET", "/api/auth/verify", token=r.json["access_token"])
        self.assertEqual(v.status, 200)
        self.assertEqual(v.json, {"valid": True, "user_id": user})
        # A second exchange for the same user works too.
        r2 = self.exchange(user, self.sb(supabase_claims(user)))
        self.assertEqual(r2.status, 200, r2)
        # And the refresh token from the exchange refreshes.
        rr = self.srv.request("POST", "/api/auth/refresh", body={"refresh_token": r.json["refresh_token"]})
        self.assertEqual(rr.status, 200, rr)

    def test_sub_mismatch_forbidden(self):
        user, other = new_user(), new_user()
        r = self.exchange(other, self.sb(supabase_claims(user)))
        self.assertJsonError(r, 403)
        self.assertIsNone(db_user(self.srv, other))
        self.assertIsNone(db_user(self.srv, user))

    def test_anon_and_service_role_refused(self):
        user = new_user()
        for role in ("anon", "service_role", "", None):
            with self.subTest(role=role):
                claims = supabase_claims(user, role=role)
                if role in ("anon", "service_role"):
                    claims.pop("sub")  # what Supabase's anon/service keys look like
                r = self.exchange(user, self.sb(claims))
                self.assertJsonError(r, 401)
                # The same role with a matching sub is refused as well.
                r = self.exchange(user, self.sb(dict(claims, sub=user)))
                self.assertJsonError(r, 401)
        self.assertIsNone(db_user(self.srv, user))

    def test_missing_sub(self):
        user = new_user()
        r = self.exchange(user, self.sb(supabase_claims(None)))
        self.assertJsonError(r, 401)
        r = self.exchange(user, self.sb(supabase_claims("")))
        self.assertJsonError(r, 401)
        self.assertIsNone(db_user(self.srv, user))

    def test_expired(self):
        user = new_user()
        r = self.exchange(user, self.sb(supabase_claims(user, exp_delta=-120)))
        self.assertJsonError(r, 401, "Token has expired")
        self.assertIsNone(db_user(self.srv, user))

    def test_wrong_secret(self):
        user = new_user()
        r = self.exchange(user, self.sb(supabase_claims(user), secret="not-the-supabase-secret-" + "z" * 20))
        self.assertJsonError(r, 401, "Signature verification failed")
        self.assertIsNone(db_user(self.srv, user))

    def test_wrong_audience_and_algorithm(self):
        user = new_user()
        r = self.exchange(user, self.sb(supabase_claims(user, aud="somebody-else")))
        self.assertJsonError(r, 401)
        r = self.exchange(user, jwt.encode(supabase_claims(user), SUPABASE_SECRET, algorithm="HS512"))
        self.assertJsonError(r, 401, "Algorithm not allowed")
        self.assertIsNone(db_user(self.srv, user))

    def test_missing_or_bad_authorization(self):
        user = new_user()
        r = self.srv.request("POST", "/api/auth/token", body={"user_id": user})
        self.assertJsonError(r, 401, "Missing authorization header")
        r = self.srv.request("POST", "/api/auth/token", body={"user_id": user},
                             headers={"Authorization": "Basic abc"})
        self.assertJsonError(r, 401, "Invalid authentication scheme")
        self.assertIsNone(db_user(self.srv, user))

    def test_own_tokens_are_not_supabase_tokens_and_vice_versa(self):
        user = new_user()
        own = self.srv.token(user)
        r = self.exchange(user, own)
        self.assertJsonError(r, 401)
        # A valid Supabase token is not an API access token.
        r = self.srv.request("GET", "/api/projects", token=self.sb(supabase_claims(user)))
        self.assertJsonError(r, 401)

    def test_validation_still_applies(self):
        user = new_user()
        tok = self.sb(supabase_claims(user))
        self.assertJsonError(self.srv.request("POST", "/api/auth/token", body={}, token=tok), 400)
        self.assertJsonError(self.srv.request("POST", "/api/auth/token", body={"user_id": "x"}, token=tok), 400)

    def test_short_supabase_secret_refused_at_start(self):
        r = subprocess.run([BIN, "serve"], cwd=ROOT, capture_output=True, text=True, timeout=15,
                           env=dict(self.srv.env, PORT=str(free_port()), SUPABASE_JWT_SECRET="too-short"))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("SUPABASE_JWT_SECRET", r.stderr)
        self.assertNotIn("too-short", r.stderr + r.stdout)


# -- Supabase JWKS (SUPABASE_URL) ---------------------------------------------------

# The rotation scenario needs the server's unknown-kid refetch, which is throttled to
# one per 10 s after a successful fetch; its server is started for the whole module
# so that the wait overlaps with the other tests.
_rotation = {}


def setUpModule():
    fake = FakeSupabaseAuth()
    srv = Server(env={"SUPABASE_URL": fake.url})
    _rotation.update(fake=fake, srv=srv, first_kid=fake.kid, first_key=fake.key)
    user = new_user()
    r = srv.request("POST", "/api/auth/token", body={"user_id": user},
                    token=fake.sign(supabase_claims(user)))
    _rotation.update(warm_status=r.status, warm_at=time.monotonic(), warm_requests=fake.jwks_requests)


def tearDownModule():
    if "srv" in _rotation:
        _rotation["srv"].close()
    if "fake" in _rotation:
        _rotation["fake"].close()


class SupabaseJwksTests(ApiAssertions):
    @classmethod
    def setUpClass(cls):
        cls.fake = FakeSupabaseAuth()
        cls.srv = Server(env={"SUPABASE_URL": cls.fake.url})

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()
        cls.fake.close()

    def exchange(self, user_id, token, srv=None):
        return (srv or self.srv).request("POST", "/api/auth/token", body={"user_id": user_id}, token=token)

    def test_es256_with_right_kid_verifies(self):
        user = new_user()
        r = self.exchange(user, self.fake.sign(supabase_claims(user, email="es@example.com")))
        self.assertEqual(r.status, 200, r)
        self.assertTokenPair(r.json, user)
        self.assertGreaterEqual(self.fake.jwks_requests, 1)
        row = db_user(self.srv, user)
        self.assertIsNotNone(row)
        self.assertEqual(row["email"], "es@example.com")
        v = self.srv.request("GET", "/api/auth/verify", token=r.json["access_token"])
        self.assertEqual(v.json, {"valid": True, "user_id": user})

    def test_token_signed_by_another_key_refused(self):
        user = new_user()
        # Same kid as the published key, different private key.
        r = self.exchange(user, self.fake.sign(supabase_claims(user), key=new_ec_key()))
        self.assertJsonError(r, 401)
        # An unknown kid.
        r = self.exchange(user, self.fake.sign(supabase_claims(user), kid="kid-nobody", key=new_ec_key()))
        self.assertJsonError(r, 401)
        self.assertIsNone(db_user(self.srv, user))

    def test_alg_confusion_refused(self):
        user = new_user()
        # HS256 keyed with the public key (PEM and JWK text), claiming the published kid.
        pem = self.fake.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        for secret in (pem, json.dumps(public_jwk(self.fake.key, self.fake.kid))):
            tok = hs_token(supabase_claims(user), secret, header={"kid": self.fake.kid})
            self.assertJsonError(self.exchange(user, tok), 401)
        self.assertJsonError(self.exchange(user, tok), 401)
        header = b64url_json({"alg": "none", "kid": self.fake.kid})
        self.assertJsonError(self.exchange(user, header + "." + b64url_json(supabase_claims(user)) + "."), 401)
        self.assertIsNone(db_user(self.srv, user))

    def test_claims_checked_in_jwks_mode(self):
        user, other = new_user(), new_user()
        self.assertJsonError(self.exchange(other, self.fake.sign(supabase_claims(user))), 403)
        self.assertJsonError(self.exchange(user, self.fake.sign(supabase_claims(user, role="anon"))), 401)
        self.assertJsonError(self.exchange(user, self.fake.sign(supabase_claims(user, role="service_role"))), 401)
        self.assertJsonError(self.exchange(user, self.fake.sign(supabase_claims(None))), 401)
        self.assertJsonError(self.exchange(user, self.fake.sign(supabase_claims(user, exp_delta=-120))), 401,
                             "Token has expired")
        self.assertIsNone(db_user(self.srv, user))
        self.assertIsNone(db_user(self.srv, other))

    def test_jwks_endpoint_faults(self):
        with FakeSupabaseAuth() as fake:
            fake.fault = "500"
            with Server(env={"SUPABASE_URL": fake.url}) as srv:
                user = new_user()
                for fault in ("500", "garbage"):
                    fake.fault = fault
                    time.sleep(2.1)  # a failed fetch is retried at most every 2 s
                    before = fake.jwks_requests
                    r = self.exchange(user, fake.sign(supabase_claims(user)), srv=srv)
                    # Refused cleanly: JSON, never a token, never a 500.
                    self.assertIn(r.status, (401, 503), (fault, r))
                    self.assertJsonError(r, r.status)
                    self.assertGreater(fake.jwks_requests, before, "the JWKS must have been requested")
                    self.assertIsNone(db_user(srv, user))
                self.assertIn("JWKS", srv.log_text())
                # The endpoint recovers: the next exchange fetches the keys and succeeds.
                fake.fault = None
                time.sleep(2.1)
                r = self.exchange(user, fake.sign(supabase_claims(user)), srv=srv)
                self.assertEqual(r.status, 200, r)
                self.assertIsNotNone(db_user(srv, user))
                # An outage after a successful fetch keeps the cached keys working.
                fake.fault = "500"
                r = self.exchange(user, fake.sign(supabase_claims(user)), srv=srv)
                self.assertEqual(r.status, 200, r)
                fake.fault = "garbage"
                r = self.exchange(user, fake.sign(supabase_claims(user)), srv=srv)
                self.assertEqual(r.status, 200, r)

    def test_zz_key_rotation_refetches_on_unknown_kid(self):
        fake, srv = _rotation["fake"], _rotation["srv"]
        self.assertEqual(_rotation["warm_status"], 200, "the first key must verify")
        new_kid = fake.rotate()  # the old key is no longer published
        self.assertNotEqual(new_kid, _rotation["first_kid"])
        # The server throttles unknown-kid refetches to one per 10 s.
        wait = 10.5 - (time.monotonic() - _rotation["warm_at"])
        if wait > 0:
            time.sleep(wait)
        before = fake.jwks_requests
        user = new_user()
        r = self.exchange(user, fake.sign(supabase_claims(user)), srv=srv)
        self.assertEqual(r.status, 200, r)
        self.assertGreater(fake.jwks_requests, before, "the unknown kid must trigger a JWKS refetch")
        self.assertIsNotNone(db_user(srv, user))
        # The retired key is gone from the refreshed set.
        old = fake.sign(supabase_claims(user), kid=_rotation["first_kid"], key=_rotation["first_key"])
        self.assertJsonError(self.exchange(user, old, srv=srv), 401)


# -- AUTH_TRUST_CLIENT_USER_ID=1 ----------------------------------------------------

class TrustClientUserIdTests(ApiAssertions):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server(env={"AUTH_TRUST_CLIENT_USER_ID": "1"})

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()

    def test_token_with_just_user_id(self):
        user = new_user()
        self.srv.sign_up(user)
        r = self.srv.request("POST", "/api/auth/token", body={"user_id": user})
        self.assertEqual(r.status, 200, r)
        self.assertTokenPair(r.json, user)
        self.assertIsNotNone(db_user(self.srv, user))
        v = self.srv.request("GET", "/api/auth/verify", token=r.json["access_token"])
        self.assertEqual(v.json, {"valid": True, "user_id": user})

    def test_startup_warning_logged(self):
        warnings = [l for l in self.srv.log_lines()
                    if l.get("level") == "warn" and "AUTH_TRUST_CLIENT_USER_ID" in l.get("msg", "")]
        self.assertTrue(warnings, self.srv.log_text()[:2000])

    def test_validation_still_applies(self):
        for body in ({}, {"user_id": 5}, {"user_id": "not-a-uuid"}, [new_user()]):
            with self.subTest(body=body):
                self.assertJsonError(self.srv.request("POST", "/api/auth/token", body=body), 400)
        self.assertJsonError(self.srv.request("POST", "/api/auth/token"), 400)
        self.assertJsonError(self.srv.request("POST", "/api/auth/token", raw=b"{nope",
                                              headers={"Content-Type": "application/json"}), 400)


if __name__ == "__main__":
    unittest.main()
