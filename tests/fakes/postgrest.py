#!/usr/bin/python3
"""A PostgREST-compatible HTTP double, as Supabase exposes it at /rest/v1, executing
on a real PostgreSQL (psycopg2) against the real migrated schema (db/supabase/).

    python3 tests/fakes/postgrest.py --port 0 --db postgresql://postgres@127.0.0.1:5433/aicode \
        [--jwt-secret S] [--pool-size 10] [--fail-rate P] [--fail-next N] [--fail-mode status|drop]
        [--fail-status 503] [--delay-ms MS] [--seed N] [--log FILE]

    from postgrest import start, supabase_keys, user_jwt
    server, thread, port = start(database_url=url, jwt_secret=secret)
    server.url            # http://127.0.0.1:PORT  (SUPABASE_URL; the API is under /rest/v1)
    server.keys           # {"anon": <jwt>, "service_role": <jwt>} signed with the secret
    server.requests       # every request: seq, ts, method, path, query, role, status, body
    server.opts["down"] = True   # or POST /_control/down: "database down" until /_control/up

The first stdout line (CLI) is `postgrest listening on http://127.0.0.1:PORT/rest/v1`, then
`anon_key=...` and `service_role_key=...`. SIGTERM or SIGINT stops it.

What it does, as PostgREST v12 behind Supabase's gateway does (https://postgrest.org):
  * Auth: the `apikey` header (or ?apikey=) is required: missing -> 401 "No API key found
    in request"; a key not signed with the JWT secret -> 401 "Invalid API key". The token is
    `Authorization: Bearer <jwt>`, else the apikey. HS256 only (the header's alg is not
    trusted); exp/nbf/iat checked with 30 s skew: 401 PGRST301 (bad token) / PGRST303 (JWT
    expired). The `role` claim (default anon) becomes the database role, per request:
    `set_config('role', ...)` (a superuser login first drops to `authenticator`, so only the
    roles granted to it work), `set_config('request.jwt.claims', <claims json>, true)`, plus
    request.method / request.path / request.headers and search_path=public, so RLS,
    auth.uid() and auth.jwt() work for real; service_role has BYPASSRLS. One transaction per
    request (READ ONLY for GET/HEAD), committed at the end, rolled back on any error.
  * Tables (and views) of schema public: GET/HEAD, POST, PATCH, DELETE /rest/v1/<table>.
      filters   col=[not.]op.value, op: eq neq gt gte lt lte like ilike match imatch
                in.(a,b,"c,d") is.(null|not_null|true|false|unknown) cs cd isdistinct;
                col may be a JSON path (data->>key, data->a->>b); `*` in like = %;
                or=(a.eq.1,and(b.gt.2,c.is.null)) / and=(...) / not.or=(...)
      select    *, col, alias:col, col::type, data->>key (output name: key)
      order     col[.asc|.desc][.nullsfirst|.nullslast], several comma-separated
      limit / offset, or a `Range: 0-9` header
      Prefer    return=representation|minimal (POST default minimal: 201 no body; PATCH /
                DELETE minimal: 204), count=exact|planned|estimated (all exact):
                Content-Range `0-9/42` (`*/0` when empty; `/*` without a count); a GET with
                an exact count that returns only part of the rows answers 206, an offset past
                the end 416 PGRST103. resolution=merge-duplicates|ignore-duplicates with
                ?on_conflict=a,b (default: the primary key). Preference-Applied echoes them.
      body      JSON object or array (all objects with the same keys, else 400 PGRST102);
                ?columns=a,b picks the columns. Values are converted by PostgreSQL
                (json_populate_recordset), as PostgREST does.
      Accept: application/vnd.pgrst.object+json -> the single row as an object; 406 PGRST116
      when not exactly one row (a write is then rolled back).
  * RPC: POST /rest/v1/rpc/<fn> with named JSON args (GET with query args, in a read-only
    transaction). The function is found by name and argument names (defaults may be left
    out), else 404 PGRST202. Result: set-returning -> array (filters/select/order/limit
    apply); single composite / OUT params -> object; scalar -> the JSON value; void -> 204.
  * Errors: {"code","message","details","hint"}. PostgreSQL errors carry their SQLSTATE,
    status as PostgREST maps it: 23503/23505 -> 409, 42P01/42883 -> 404, 42501 -> 401 (anon)
    / 403, 25006 -> 405, P0001 -> 400, PTxyz -> xyz, 08*/53* -> 503, 09* 25* 2D* 38* 39* 3B*
    40* 54* 55* 57* 58* F0* HV* P0* XX* 42P17 -> 500, anything else -> 400 (22P02, 42703, ...).
    Database unreachable (or "down") -> 503 PGRST000; pool exhausted -> 504 PGRST003.

Test-only extras (control routes, not logged, prefix /_control/ or /_fake/):
    POST /_control/down | /_control/up    database down (pool closed, every API request 503
                                          PGRST000) / back
    POST /_control/config {...}           merge options (fail_next, fail_rate, fail_mode,
                                          fail_status, delay_ms, down), returns them
    GET  /_control/requests, POST /_control/reset (clears the log)
    POST /_control/auth_users {"id"?, "email"?, "raw_user_meta_data"?}
                                          inserts into auth.users as the connecting
                                          (super)user, as GoTrue's sign-up would; the
                                          on_auth_user_created trigger makes public.users.
                                          Returns {"id": ...}.
Faults: fail_next N / fail_rate P answer fail_status (503) with a PGRST000 body, or with
fail_mode "drop" close the connection without an answer; delay_ms sleeps before each request.
The server itself (listen backlog, the request log, server.url, close()) is fakekit.py's; the
answers (_send) and the control routes above are the double's own.
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
import urllib.parse

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

try:
    from . import fakekit
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import fakekit

DEFAULT_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"  # Supabase local dev's
DEFAULTS = {
    "database_url": None,
    "jwt_secret": DEFAULT_JWT_SECRET,
    "schema": "public",
    "anon_role": "anon",
    "login_role": "authenticator",  # as PostgREST: a superuser login drops to this role (None: keep it)
    "prefix": "/rest/v1",
    "pool_size": 10,
    "pool_timeout": 10.0,     # seconds to wait for a free connection (then 504 PGRST003)
    "connect_timeout": 3,
    "jwt_skew": 30,
    "fail_rate": 0.0, "fail_next": 0, "fail_mode": "status", "fail_status": 503, "delay_ms": 0,
    "down": False,
    "log": None, "seed": None,
}
SINGULAR = "application/vnd.pgrst.object+json"
RESERVED = {"select", "order", "limit", "offset", "on_conflict", "columns", "apikey"}
OPERATORS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "like": "LIKE",
             "ilike": "ILIKE", "match": "~", "imatch": "~*", "cs": "@>", "cd": "<@",
             "isdistinct": "IS DISTINCT FROM"}
IS_VALUES = {"null": "NULL", "not_null": "NOT NULL", "true": "TRUE", "false": "FALSE", "unknown": "UNKNOWN"}


# ---------------------------------------------------------------------------
# JWT (HS256, stdlib only)
# ---------------------------------------------------------------------------

def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_jwt(claims, secret):
    """An HS256 JWT of `claims` signed with `secret`."""
    head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), ("%s.%s" % (head, body)).encode(), hashlib.sha256).digest()
    return "%s.%s.%s" % (head, body, _b64url(sig))


def supabase_keys(secret=DEFAULT_JWT_SECRET):
    """The anon and service_role API keys of a project with this JWT secret (legacy keys:
    JWTs with a role claim and no sub)."""
    iat = 1700000000
    exp = iat + 10 * 365 * 86400
    return {role: sign_jwt({"iss": "supabase-demo", "role": role, "iat": iat, "exp": exp}, secret)
            for role in ("anon", "service_role")}


def user_jwt(user_id, secret=DEFAULT_JWT_SECRET, email=None, ttl=3600, role="authenticated", **extra):
    """A Supabase user access token (role authenticated, sub = the user id)."""
    now = int(time.time())
    claims = {"aud": "authenticated", "iss": "http://127.0.0.1/auth/v1", "sub": str(user_id),
              "role": role, "email": email or "", "iat": now, "exp": now + ttl,
              "app_metadata": {"provider": "email"}, "user_metadata": {}, "session_id": "double"}
    claims.update(extra)
    return sign_jwt(claims, secret)


class JwtError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def verify_jwt(token, secret, skew=30, check_time=True):
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError("PGRST301", "Expected 3 parts in JWT; got %d" % len(parts))
    try:
        header = json.loads(_unb64url(parts[0]))
        claims = json.loads(_unb64url(parts[1]))
        sig = _unb64url(parts[2])
    except (ValueError, UnicodeDecodeError):
        raise JwtError("PGRST301", "JWSError (CompactDecodeError Invalid number of parts: Expected 3 parts; got 2)")
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise JwtError("PGRST301", "JWSError JWSInvalidSignature")
    want = hmac.new(secret.encode(), ("%s.%s" % (parts[0], parts[1])).encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(want, sig):
        raise JwtError("PGRST301", "JWSError JWSInvalidSignature")
    if not isinstance(claims, dict):
        raise JwtError("PGRST303", "Parsing claims failed")
    if check_time:
        now = time.time()
        for name in ("exp", "nbf", "iat"):
            if name in claims and (not isinstance(claims[name], (int, float)) or isinstance(claims[name], bool)):
                raise JwtError("PGRST303", "The JWT '%s' claim must be a number" % name)
        if "exp" in claims and now - skew >= claims["exp"]:
            raise JwtError("PGRST303", "JWT expired")
        if "nbf" in claims and now + skew < claims["nbf"]:
            raise JwtError("PGRST303", "JWT not yet valid")
        if "iat" in claims and now + skew < claims["iat"]:
            raise JwtError("PGRST303", "JWT issued at future")
    role = claims.get("role")
    if role is not None and not isinstance(role, str):
        raise JwtError("PGRST303", "The JWT 'role' claim must be a string")
    return claims


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

class ApiError(Exception):
    def __init__(self, status, code, message, details=None, hint=None, headers=None, body=None):
        super().__init__(message)
        self.status = status
        self.body = body if body is not None else {"code": code, "details": details, "hint": hint,
                                                   "message": message}
        self.headers = headers or {}


class DbUnavailable(Exception):
    pass


def pg_status(code, authed):
    """HTTP status for a SQLSTATE, as PostgREST maps it (docs: Errors > PostgreSQL errors)."""
    if not code:
        return 500
    if code == "42501":
        return 403 if authed else 401
    if code.startswith("PT") and code[2:].isdigit():
        return int(code[2:])
    exact = {"23503": 409, "23505": 409, "25006": 405, "42883": 404, "42P01": 404, "42P17": 500,
             "P0001": 400}
    if code in exact:
        return exact[code]
    cls = code[:2]
    if cls in ("08", "53"):
        return 503
    if cls in ("0L", "0P", "28"):
        return 403
    if cls in ("09", "25", "2D", "38", "39", "3B", "40", "54", "55", "57", "58", "F0", "HV", "P0", "XX"):
        return 500
    return 400


def pg_error(exc, authed):
    d = exc.diag
    code = exc.pgcode
    status = pg_status(code, authed)
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    message = d.message_primary or (exc.pgerror or str(exc)).strip()
    return ApiError(status, code, message, details=d.message_detail, hint=d.message_hint, headers=headers)


def parse_error(message, details=None):
    return ApiError(400, "PGRST100", message, details=details)


# ---------------------------------------------------------------------------
# Connection pool
# ---------------------------------------------------------------------------

class _Conn(psycopg2.extensions.connection):
    """A connection that remembers the pool generation it belongs to."""


class PoolTimeout(Exception):
    pass


class Pool:
    def __init__(self, opts):
        self.opts = opts
        self.cv = threading.Condition()
        self.idle = []
        self.total = 0
        self.gen = 0

    def get(self):
        deadline = time.monotonic() + float(self.opts["pool_timeout"])
        with self.cv:
            while True:
                if self.idle:
                    return self.idle.pop()
                if self.total < int(self.opts["pool_size"]):
                    self.total += 1
                    gen = self.gen
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PoolTimeout()
                self.cv.wait(left)
        try:
            conn = psycopg2.connect(self.opts["database_url"], connection_factory=_Conn,
                                    connect_timeout=int(self.opts["connect_timeout"]),
                                    application_name="postgrest-double")
        except Exception:
            with self.cv:
                self.total -= 1
                self.cv.notify()
            raise
        conn.gen = gen
        conn.fresh = True
        try:
            self._login_role(conn)
        except Exception:
            self.put(conn, broken=True)
            raise
        return conn

    def _login_role(self, conn):
        """PostgREST logs in as `authenticator`, which may switch only to the roles granted
        to it (anon, authenticated, service_role): a JWT claiming role "postgres" is refused.
        A superuser login (the test cluster's) becomes that role for the whole session."""
        role = self.opts.get("login_role")
        if not role:
            return
        with conn.cursor() as cur:
            cur.execute("SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), "
                        "EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)", (role,))
            superuser, exists = cur.fetchone()
            if superuser and exists:
                cur.execute(sql.SQL("SET SESSION AUTHORIZATION {}").format(sql.Identifier(role)))
        conn.commit()

    def put(self, conn, broken=False):
        close = broken or conn.closed or conn.gen != self.gen
        if not close and conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
            close = True
        with self.cv:
            if close:
                self.total -= 1
            else:
                conn.fresh = False
                self.idle.append(conn)
            self.cv.notify()
        if close:
            try:
                conn.close()
            except Exception:
                pass

    def close_all(self):
        with self.cv:
            self.gen += 1
            idle, self.idle = self.idle, []
            self.total -= len(idle)
            self.cv.notify_all()
        for conn in idle:
            try:
                conn.close()
            except Exception:
                pass


# ---------------------------------------------------------------------------
# Query-string grammar
# ---------------------------------------------------------------------------

def split_top(text, sep=","):
    """Splits on `sep` outside parentheses and double quotes."""
    out, depth, quoted, cur = [], 0, False, []
    i = 0
    while i < len(text):
        ch = text[i]
        if quoted:
            cur.append(ch)
            if ch == "\\" and i + 1 < len(text):
                cur.append(text[i + 1])
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
            cur.append(ch)
        elif ch == "(":
            depth += 1
            cur.append(ch)
        elif ch == ")":
            depth -= 1
            cur.append(ch)
        elif ch == sep and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return out


def unquote_value(v):
    v = v.strip()
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return re.sub(r'\\(.)', r'\1', v[1:-1])
    return v


_ARROW = re.compile(r"(->>|->)")


def column_expr(qual, text):
    """`col`, `col->a->>b` -> (SQL expression, default output name)."""
    text = text.strip()
    if not text:
        raise parse_error("empty column name")
    parts = _ARROW.split(text)
    name = parts[0].strip()
    if not name or any(c in name for c in ".,():"):
        raise parse_error('"failed to parse column (%s)"' % text)
    expr = sql.SQL("{}.{}").format(qual, sql.Identifier(name))
    out = name
    for i in range(1, len(parts), 2):
        arrow, key = parts[i], parts[i + 1].strip()
        if not key:
            raise parse_error('"failed to parse json path (%s)"' % text)
        key_sql = sql.Literal(int(key)) if re.fullmatch(r"-?\d+", key) else sql.Literal(unquote_value(key))
        expr = sql.SQL("({} " + arrow + " {})").format(expr, key_sql)
        out = key
    return expr, out


def parse_select(qual, text):
    if text is None or text.strip() in ("", "*"):
        return sql.SQL("{}.*").format(qual)
    items = []
    for raw in split_top(text):
        raw = raw.strip()
        if not raw:
            continue
        if raw == "*":
            items.append(sql.SQL("{}.*").format(qual))
            continue
        if "(" in raw:
            raise ApiError(400, "PGRST100", "resource embedding is not supported by this PostgREST double",
                           details=raw)
        alias = None
        if ":" in raw and not re.match(r"^[^:]*::", raw):
            alias, raw = raw.split(":", 1)
            alias = alias.strip()
        cast = None
        if "::" in raw:
            raw, cast = raw.split("::", 1)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_ ]*(\[\])?", cast.strip()):
                raise parse_error("invalid cast %s" % cast)
        expr, name = column_expr(qual, raw)
        if cast:
            expr = sql.SQL("CAST({} AS " + cast.strip() + ")").format(expr)
        items.append(sql.SQL("{} AS {}").format(expr, sql.Identifier(alias or name)))
    if not items:
        return sql.SQL("{}.*").format(qual)
    return sql.SQL(", ").join(items)


def parse_in_list(text):
    text = text.strip()
    if not (text.startswith("(") and text.endswith(")")):
        raise parse_error('"failed to parse filter (in.%s)"' % text)
    inner = text[1:-1]
    if inner.strip() == "":
        return []
    return [unquote_value(v) for v in split_top(inner)]


def filter_expr(qual, col, expr_text):
    """`col` + `[not.]op.value` -> SQL condition."""
    negate = False
    expr_text_orig = expr_text
    if expr_text.startswith("not."):
        negate, expr_text = True, expr_text[4:]
    op, dot, value = expr_text.partition(".")
    if not dot:
        raise parse_error('"failed to parse filter (%s)" (line 1, column %d)' % (expr_text_orig, len(op) + 1),
                          details="unexpected end of input expecting \".\"")
    lhs, _ = column_expr(qual, col)
    if op == "in":
        values = parse_in_list(value)
        if not values:
            cond = sql.SQL("FALSE")
        else:
            cond = sql.SQL("{} IN ({})").format(lhs, sql.SQL(", ").join(sql.Literal(v) for v in values))
    elif op == "is":
        v = value.strip().lower()
        if v not in IS_VALUES:
            raise parse_error('"failed to parse filter (%s)" (line 1, column %d)' % (expr_text_orig, len(op) + 2),
                              details='unexpected "%s" expecting null or trilean value (unknown, true, false)' % value)
        cond = sql.SQL("{} IS " + IS_VALUES[v]).format(lhs)
    elif op in OPERATORS:
        if op in ("like", "ilike"):
            value = value.replace("*", "%")
        cond = sql.SQL("{} " + OPERATORS[op] + " {}").format(lhs, sql.Literal(unquote_value(value)
                                                                              if op not in ("like", "ilike")
                                                                              else value))
    else:
        raise parse_error('"failed to parse filter (%s)" (line 1, column 1)' % expr_text_orig,
                          details='unexpected "%s" expecting operator (eq, gt, ...)' % op)
    return sql.SQL("NOT ({})").format(cond) if negate else cond


def logic_expr(qual, op, text, negate=False):
    """or=(...) / and=(...) trees."""
    text = text.strip()
    if not (text.startswith("(") and text.endswith(")")):
        raise parse_error('"failed to parse logic tree (%s)"' % text)
    conds = []
    for item in split_top(text[1:-1]):
        item = item.strip()
        m = re.match(r"^(not\.)?(or|and)(\(.*\))$", item, re.S)
        if m:
            conds.append(logic_expr(qual, m.group(2), m.group(3), bool(m.group(1))))
            continue
        col, dot, rest = item.partition(".")
        if not dot:
            raise parse_error('"failed to parse logic tree (%s)"' % text)
        conds.append(filter_expr(qual, col, rest))
    if not conds:
        raise parse_error('"failed to parse logic tree (%s)"' % text)
    joined = sql.SQL(" OR " if op == "or" else " AND ").join(sql.SQL("({})").format(c) for c in conds)
    return sql.SQL("NOT ({})").format(joined) if negate else sql.SQL("({})").format(joined)


def parse_order(qual, text):
    items = []
    for raw in split_top(text):
        raw = raw.strip()
        if not raw:
            continue
        bits = raw.split(".")
        col = bits[0]
        expr, _ = column_expr(qual, col)
        direction, nulls = "", ""
        for b in bits[1:]:
            if b in ("asc", "desc") and not direction:
                direction = " " + b.upper()
            elif b in ("nullsfirst", "nullslast") and not nulls:
                nulls = " NULLS FIRST" if b == "nullsfirst" else " NULLS LAST"
            else:
                raise parse_error('"failed to parse order (%s)" (line 1, column %d)' % (raw, len(col) + 2),
                                  details='unexpected "%s" expecting "asc", "desc", "nullsfirst" or "nullslast"' % b)
        items.append(sql.SQL("{}" + direction + nulls).format(expr))
    return sql.SQL(", ").join(items) if items else None


class Query:
    """The horizontal and vertical filtering part of a request."""

    def __init__(self, params, headers, skip=()):
        self.select = None
        self.order = None
        self.limit = None
        self.offset = 0
        self.filters = []   # (kind, a, b): ("col", col, expr) | ("logic", op/negate, text)
        self.on_conflict = None
        self.columns = None
        for key, value in params:
            if key in skip:
                continue
            if key == "select":
                self.select = value
            elif key == "order":
                self.order = value
            elif key == "limit":
                self.limit = self._int(key, value)
            elif key == "offset":
                self.offset = self._int(key, value)
            elif key == "on_conflict":
                self.on_conflict = [c.strip() for c in value.split(",") if c.strip()]
            elif key == "columns":
                self.columns = [c.strip() for c in value.split(",") if c.strip()]
            elif key == "apikey":
                continue
            elif key in ("or", "and", "not.or", "not.and"):
                self.filters.append(("logic", key, value))
            else:
                self.filters.append(("col", key, value))
        rng = headers.get("Range")
        if rng:
            m = re.fullmatch(r"\s*(\d+)-(\d*)\s*", rng)
            if m:
                start = int(m.group(1))
                self.offset = start
                if m.group(2):
                    self.limit = max(0, int(m.group(2)) - start + 1)

    @staticmethod
    def _int(key, value):
        try:
            n = int(value)
            if n < 0:
                raise ValueError
            return n
        except ValueError:
            raise parse_error('"failed to parse %s parameter (%s)"' % (key, value))

    def where(self, qual):
        conds = []
        for kind, a, b in self.filters:
            if kind == "col":
                conds.append(filter_expr(qual, a, b))
            else:
                negate = a.startswith("not.")
                conds.append(logic_expr(qual, a.split(".")[-1], b, negate))
        if not conds:
            return sql.SQL("")
        return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds)

    def tail(self, qual, paginate=True):
        parts = []
        if self.order:
            o = parse_order(qual, self.order)
            if o is not None:
                parts.append(sql.SQL(" ORDER BY ") + o)
        if paginate:
            if self.limit is not None:
                parts.append(sql.SQL(" LIMIT {}").format(sql.Literal(self.limit)))
            if self.offset:
                parts.append(sql.SQL(" OFFSET {}").format(sql.Literal(self.offset)))
        return sql.Composed(parts)


def parse_prefer(headers):
    prefs = {}
    for raw in headers.get_all("Prefer") or []:
        for item in raw.split(","):
            item = item.strip()
            if "=" in item:
                k, v = item.split("=", 1)
                prefs[k.strip().lower()] = v.strip().lower()
    return prefs


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------

class Handler(fakekit.Handler):  # its own _send and control routes (/_control/ or /_fake/)
    disable_nagle_algorithm = True  # otherwise every small response waits ~40 ms (Nagle + delayed ACK)
    server_version = "postgrest-double/12"

    # -- plumbing ----------------------------------------------------------
    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                line = self.rfile.readline().strip()
                size = int(line.split(b";")[0], 16) if line else 0
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _send(self, status, body=None, ctype="application/json; charset=utf-8", headers=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        data = body.encode() if isinstance(body, str) else (body or b"")
        # Recorded before the response goes out: a client that has read it may look
        # at server.requests at once (in-process tests do), and must find the status.
        if self.entry is not None:
            self.entry["status"] = status
        self.send_response(status)
        if data or status not in (204, 304):
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)

    def _drop(self):
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self.entry is not None:
            self.entry["status"] = "dropped"

    # -- entry point ---------------------------------------------------------
    def _handle(self):
        self.entry = None
        srv = self.server
        parsed = urllib.parse.urlsplit(self.path)
        path = parsed.path
        params = urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)
        try:
            raw = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        for prefix in ("/_control/", "/_fake/"):
            if path.startswith(prefix):
                return self._control(path[len(prefix):], raw)

        body_log = None
        if raw:
            try:
                body_log = json.loads(raw)
            except ValueError:
                body_log = raw.decode("utf-8", "replace")[:2000]
        hdrs = {k.lower(): v for k, v in self.headers.items()
                if k.lower() not in ("authorization", "apikey", "cookie")}
        self.entry = srv.record({"method": self.command, "path": path, "query": parsed.query,
                                 "role": None, "headers": hdrs, "body": body_log})

        opts = srv.opts
        if opts.get("delay_ms"):
            time.sleep(float(opts["delay_ms"]) / 1000.0)
        if srv.should_fail():
            if opts.get("fail_mode") == "drop":
                return self._drop()
            return self._send(int(opts.get("fail_status") or 503),
                              {"code": "PGRST000", "details": "injected failure", "hint": None,
                               "message": "Database connection error. Retrying the connection."})
        try:
            self._api(path, params, raw)
        except ApiError as e:
            self._send(e.status, e.body, headers=e.headers)
        except DbUnavailable as e:
            self._send(503, {"code": "PGRST000", "details": str(e) or None, "hint": None,
                             "message": "Database connection error. Retrying the connection."})
        except PoolTimeout:
            self._send(504, {"code": "PGRST003", "details": None, "hint": None,
                             "message": "Timed out acquiring connection from connection pool."})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug in the double: answer, and show it on stderr
            traceback.print_exc()
            self._send(500, {"code": "XX000", "details": None, "hint": None,
                             "message": "postgrest double: internal error: %r" % (e,)})
        finally:
            srv.flush_log(self.entry)

    do_GET = do_POST = do_PATCH = do_DELETE = do_HEAD = do_PUT = do_OPTIONS = _handle

    # -- control routes --------------------------------------------------------
    def _control(self, name, raw):
        srv = self.server
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return self._send(400, {"message": "invalid JSON"})
        if name == "down" and self.command == "POST":
            srv.opts["down"] = True
            srv.pool.close_all()
            return self._send(200, {"down": True})
        if name == "up" and self.command == "POST":
            srv.opts["down"] = False
            return self._send(200, {"down": False})
        if name == "config" and self.command == "POST":
            if not isinstance(body, dict):
                return self._send(400, {"message": "expected a JSON object"})
            with srv.lock:
                srv.opts.update(body)
            if body.get("down"):
                srv.pool.close_all()
            return self._send(200, {k: v for k, v in srv.opts.items() if k not in ("jwt_secret",)})
        if name == "requests" and self.command == "GET":
            with srv.lock:
                return self._send(200, list(srv.requests))
        if name == "reset" and self.command == "POST":
            with srv.lock:
                srv.requests.clear()
            return self._send(200, {"ok": True})
        if name == "auth_users" and self.command == "POST":
            try:
                return self._send(201, srv.create_auth_user(body if isinstance(body, dict) else {}))
            except psycopg2.Error as e:
                err = pg_error(e, True)
                return self._send(err.status, err.body)
        return self._send(404, {"message": "unknown control route %s" % name})

    # -- the API ---------------------------------------------------------------
    def _api(self, path, params, raw):
        srv = self.server
        prefix = srv.opts["prefix"].rstrip("/")
        if not (path == prefix or path.startswith(prefix + "/")):
            raise ApiError(404, None, "no Route matched with those values", body={
                "message": "no Route matched with those values"})
        rest = path[len(prefix):].strip("/")
        auth = self._authenticate(params)
        self.entry["role"] = auth["role"]
        schema = srv.opts["schema"]
        for h in ("Accept-Profile", "Content-Profile"):
            prof = self.headers.get(h)
            if prof and prof != schema:
                raise ApiError(406, "PGRST106", "The schema must be one of the following: %s" % schema)
        if srv.opts.get("down"):
            raise DbUnavailable("the database is down (test control)")
        singular = self._wants_singular()
        method = self.command
        if method == "OPTIONS":
            return self._send(200, b"", headers={"Allow": "OPTIONS,GET,HEAD,POST,PUT,PATCH,DELETE"})
        if rest == "":
            if method not in ("GET", "HEAD"):
                raise ApiError(405, "PGRST117", "Unsupported HTTP method: %s" % method)
            return self._root(auth)
        segs = [urllib.parse.unquote(s) for s in rest.split("/")]
        if segs[0] == "rpc" and len(segs) == 2:
            if method not in ("GET", "HEAD", "POST"):
                raise ApiError(405, "PGRST101", "Only GET, HEAD or POST are allowed for RPC")
            return self._rpc(auth, segs[1], params, raw, singular)
        if len(segs) != 1:
            raise ApiError(404, None, "not found", body={})
        table = segs[0]
        if method in ("GET", "HEAD"):
            return self._read(auth, table, params, singular)
        if method == "POST":
            return self._insert(auth, table, params, raw, singular)
        if method == "PATCH":
            return self._update(auth, table, params, raw, singular)
        if method == "DELETE":
            return self._delete(auth, table, params, singular)
        raise ApiError(405, "PGRST117", "Unsupported HTTP method: %s" % method)

    def _wants_singular(self):
        accept = (self.headers.get("Accept") or "").lower()
        if not accept:
            return False
        types = [a.split(";")[0].strip() for a in accept.split(",")]
        for t in types:
            if t in (SINGULAR, "application/vnd.pgrst.object"):
                return True
            if t in ("application/json", "*/*", "application/*", ""):
                return False
        raise ApiError(406, "PGRST107", "None of these media types are available: %s" % accept)

    def _authenticate(self, params):
        srv = self.server
        secret = srv.opts["jwt_secret"]
        apikey = self.headers.get("apikey") or dict(params).get("apikey")
        if not apikey:
            raise ApiError(401, None, None, body={
                "message": "No API key found in request",
                "hint": "No `apikey` request header or url param was found."})
        try:
            verify_jwt(apikey, secret, check_time=False)
        except JwtError:
            raise ApiError(401, None, None, body={
                "message": "Invalid API key",
                "hint": "Double check your Supabase `anon` or `service_role` API key."})
        authz = self.headers.get("Authorization")
        if authz:
            scheme, _, token = authz.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiError(401, "PGRST301", "Expected 3 parts in JWT; got 1",
                               headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
            token = token.strip()
        else:
            token = apikey
        try:
            claims = verify_jwt(token, secret, skew=int(srv.opts["jwt_skew"]))
        except JwtError as e:
            raise ApiError(401, e.code, e.message, headers={
                "WWW-Authenticate": 'Bearer error="invalid_token", error_description="%s"' % e.message})
        role = claims.get("role") or srv.opts["anon_role"]
        return {"claims": claims, "role": role, "authed": role != srv.opts["anon_role"]}

    # -- transactions ------------------------------------------------------------
    def _tx(self, auth, work, readonly=False):
        """Runs work(cur) in one transaction as the request's role. work may raise
        _Rollback(result) to roll back and still answer."""
        srv = self.server
        hdrs = {k.lower(): v for k, v in self.headers.items()}
        setup = ("SELECT set_config('search_path', %s, true), set_config('role', %s, true), "
                 "set_config('request.jwt.claims', %s, true), set_config('request.method', %s, true), "
                 "set_config('request.path', %s, true), set_config('request.headers', %s, true)")
        setup_args = (srv.opts["schema"], auth["role"], json.dumps(auth["claims"]), self.command,
                      urllib.parse.urlsplit(self.path).path, json.dumps(hdrs))
        attempts = int(srv.opts["pool_size"]) + 2
        for _ in range(attempts):
            try:
                conn = srv.pool.get()
            except PoolTimeout:
                raise
            except psycopg2.Error as e:
                raise DbUnavailable(str(e).strip())
            if srv.opts.get("down"):
                srv.pool.put(conn, broken=True)
                raise DbUnavailable("the database is down (test control)")
            fresh = conn.fresh
            try:
                cur = conn.cursor()
                if readonly:
                    cur.execute("SET TRANSACTION READ ONLY")
                cur.execute(setup, setup_args)
            except psycopg2.Error as e:
                if e.pgcode is None or conn.closed:
                    srv.pool.put(conn, broken=True)
                    if fresh:
                        raise DbUnavailable(str(e).strip())
                    continue  # a stale pooled connection (server restarted): try another
                self._rollback(conn)
                raise pg_error(e, auth["authed"])
            try:
                result = work(cur)
            except _Rollback as rb:
                self._rollback(conn)
                return rb.result
            except psycopg2.Error as e:
                broken = e.pgcode is None or conn.closed
                if broken:
                    srv.pool.put(conn, broken=True)
                    raise DbUnavailable(str(e).strip())
                self._rollback(conn)
                raise pg_error(e, auth["authed"])
            except BaseException:
                self._rollback(conn)
                raise
            try:
                conn.commit()
            except psycopg2.Error as e:
                if e.pgcode is None or conn.closed:
                    srv.pool.put(conn, broken=True)
                    raise DbUnavailable(str(e).strip())
                self._rollback(conn)
                raise pg_error(e, auth["authed"])
            srv.pool.put(conn)
            return result
        raise DbUnavailable("no usable database connection")

    def _rollback(self, conn):
        try:
            conn.rollback()
            self.server.pool.put(conn)
        except psycopg2.Error:
            self.server.pool.put(conn, broken=True)

    # -- responses -----------------------------------------------------------------
    def _json_result(self, status, count, array_text, first_text, singular, headers):
        if singular:
            if count != 1:
                raise ApiError(406, "PGRST116", "JSON object requested, multiple (or no) rows returned",
                               details="The result contains %d rows" % count)
            return self._send(status, first_text, ctype=SINGULAR + "; charset=utf-8", headers=headers)
        return self._send(status, array_text, headers=headers)

    @staticmethod
    def _agg(inner, alias="_pgrst_t"):
        a = sql.Identifier(alias)
        return sql.SQL("SELECT count(*), coalesce(json_agg({a}), '[]')::text, (json_agg({a}) -> 0)::text "
                       "FROM ({inner}) {a}").format(a=a, inner=inner)

    def _table(self, table):
        return sql.SQL("{}.{}").format(sql.Identifier(self.server.opts["schema"]), sql.Identifier(table))

    # -- GET / HEAD ------------------------------------------------------------------
    def _root(self, auth):
        def work(cur):
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                        "ORDER BY table_name", (self.server.opts["schema"],))
            return [r[0] for r in cur.fetchall()]
        names = self._tx(auth, work, readonly=True)
        paths = {"/": {}}
        for n in names:
            paths["/" + n] = {}
        return self._send(200, {"swagger": "2.0", "info": {"title": "PostgREST double", "version": "12"},
                                "basePath": "/", "paths": paths, "definitions": {}},
                          ctype="application/openapi+json; charset=utf-8")

    def _read(self, auth, table, params, singular):
        q = Query(params, self.headers)
        prefs = parse_prefer(self.headers)
        want_count = prefs.get("count") in ("exact", "planned", "estimated")
        tbl = self._table(table)
        where = q.where(tbl)
        inner = sql.SQL("SELECT {sel} FROM {tbl}{where}{tail}").format(
            sel=parse_select(tbl, q.select), tbl=tbl, where=where, tail=q.tail(tbl))

        def work(cur):
            total = None
            if want_count:
                cur.execute(sql.SQL("SELECT count(*) FROM {tbl}{where}").format(tbl=tbl, where=where))
                total = cur.fetchone()[0]
            cur.execute(self._agg(inner))
            n, arr, first = cur.fetchone()
            return total, n, arr, first
        total, n, arr, first = self._tx(auth, work, readonly=True)
        headers = {}
        if want_count:
            headers["Preference-Applied"] = "count=" + prefs["count"]
        # PostgREST's rangeStatus: offset past the total -> 416; fewer rows than the total -> 206.
        if total is not None and q.offset > total:
            raise ApiError(416, "PGRST103", "Requested range not satisfiable",
                           details="An offset of %d was requested, but there are only %d rows." % (q.offset, total),
                           headers={"Content-Range": "*/%d" % total})
        rng = "*" if n == 0 else "%d-%d" % (q.offset, q.offset + n - 1)
        headers["Content-Range"] = "%s/%s" % (rng, "*" if total is None else total)
        status = 206 if total is not None and not singular and n < total else 200
        return self._json_result(status, n, arr, first, singular, headers)

    # -- writes ------------------------------------------------------------------------
    def _body_json(self, raw):
        try:
            return json.loads(raw) if raw else None
        except ValueError as e:
            raise ApiError(400, "PGRST102", "Empty or invalid json", details=str(e))

    def _returning(self, tbl, q, prefs):
        if prefs.get("return") == "representation":
            return sql.SQL(" RETURNING ") + parse_select(tbl, q.select)
        return None

    def _finish_write(self, status_repr, status_min, prefs, q, singular, work_sql, auth):
        """Runs a write; answers with representation or minimal."""
        representation = prefs.get("return") == "representation"

        def work(cur):
            if representation:
                cur.execute(sql.SQL("WITH _pgrst_mut AS ({}) SELECT count(*), coalesce(json_agg(_pgrst_mut), "
                                    "'[]')::text, (json_agg(_pgrst_mut) -> 0)::text FROM _pgrst_mut").format(work_sql))
                n, arr, first = cur.fetchone()
            else:
                cur.execute(work_sql)
                n, arr, first = cur.rowcount, None, None
            if singular and n != 1:
                raise _Rollback(ApiError(406, "PGRST116", "JSON object requested, multiple (or no) rows returned",
                                         details="The result contains %d rows" % n))
            return n, arr, first
        res = self._tx(auth, work)
        if isinstance(res, ApiError):
            raise res
        n, arr, first = res
        headers = {}
        applied = [k + "=" + prefs[k] for k in ("return", "resolution", "count") if k in prefs]
        if applied:
            headers["Preference-Applied"] = ", ".join(applied)
        total = str(n) if prefs.get("count") in ("exact", "planned", "estimated") else "*"
        headers["Content-Range"] = ("*/%s" % total) if self.command == "POST" or n == 0 else \
            "0-%d/%s" % (n - 1, total)
        if representation:
            return self._json_result(status_repr, n, arr, first, singular, headers)
        return self._send(status_min, b"", headers=headers)

    def _insert(self, auth, table, params, raw, singular):
        q = Query(params, self.headers)
        prefs = parse_prefer(self.headers)
        body = self._body_json(raw)
        if isinstance(body, dict):
            rows = [body]
        elif isinstance(body, list) and all(isinstance(r, dict) for r in body):
            rows = body
        else:
            raise ApiError(400, "PGRST102", "Empty or invalid json")
        tbl = self._table(table)
        if q.columns is not None:
            cols = q.columns
        elif rows:
            cols = list(rows[0].keys())
            keyset = set(cols)
            if any(set(r.keys()) != keyset for r in rows[1:]):
                raise ApiError(400, "PGRST102", "All object keys must match")
        else:
            cols = []
        returning = self._returning(tbl, q, prefs) or sql.SQL("")
        if not rows:
            rep = prefs.get("return") == "representation"
            return self._send(201, "[]" if rep else b"", headers={"Content-Range": "*/0"})
        if not cols:
            if len(rows) != 1:
                raise ApiError(400, "PGRST102", "All object keys must match")
            stmt = sql.SQL("INSERT INTO {tbl} DEFAULT VALUES{ret}").format(tbl=tbl, ret=returning)
        else:
            idents = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
            stmt = sql.SQL("INSERT INTO {tbl} ({cols}) SELECT {cols} FROM json_populate_recordset(NULL::{tbl}, {body})"
                           ).format(tbl=tbl, cols=idents, body=sql.Literal(json.dumps(rows)))
            resolution = prefs.get("resolution")
            if resolution in ("merge-duplicates", "ignore-duplicates"):
                target = q.on_conflict or self._primary_key(auth, table)
                if not target:
                    raise ApiError(400, "PGRST100", "on_conflict is required: %s has no primary key" % table)
                conflict = sql.SQL(", ").join(sql.Identifier(c) for c in target)
                if resolution == "ignore-duplicates":
                    stmt += sql.SQL(" ON CONFLICT ({}) DO NOTHING").format(conflict)
                else:
                    sets = sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in cols)
                    stmt += sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}").format(conflict, sets)
            stmt += returning
        return self._finish_write(201, 201, prefs, q, singular, stmt, auth)

    def _primary_key(self, auth, table):
        def work(cur):
            cur.execute("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) AND i.indisprimary "
                        "ORDER BY array_position(i.indkey::int2[], a.attnum)",
                        ('"%s"."%s"' % (self.server.opts["schema"], table.replace('"', '""')),))
            return [r[0] for r in cur.fetchall()]
        return self._tx(auth, work, readonly=True)

    def _update(self, auth, table, params, raw, singular):
        q = Query(params, self.headers)
        prefs = parse_prefer(self.headers)
        body = self._body_json(raw)
        if not isinstance(body, dict):
            raise ApiError(400, "PGRST102", "Empty or invalid json")
        tbl = self._table(table)
        where = q.where(tbl)
        returning = self._returning(tbl, q, prefs) or sql.SQL("")
        if not body:
            stmt = sql.SQL("SELECT {sel} FROM {tbl}{where}").format(
                sel=parse_select(tbl, q.select), tbl=tbl, where=where)
            if prefs.get("return") != "representation":
                return self._send(204, b"", headers={"Content-Range": "*/*"})
            return self._finish_write(200, 204, prefs, q, singular, stmt, auth)
        sets = sql.SQL(", ").join(sql.SQL("{c} = _pgrst_body.{c}").format(c=sql.Identifier(c)) for c in body)
        stmt = sql.SQL("UPDATE {tbl} SET {sets} FROM (SELECT * FROM json_populate_record(NULL::{tbl}, {body})) "
                       "_pgrst_body{where}{ret}").format(tbl=tbl, sets=sets, body=sql.Literal(json.dumps(body)),
                                                         where=where, ret=returning)
        # A column in the body that the table lacks: report it like PostgREST (42703 -> 400).
        return self._finish_write(200, 204, prefs, q, singular, stmt, auth)

    def _delete(self, auth, table, params, singular):
        q = Query(params, self.headers)
        prefs = parse_prefer(self.headers)
        tbl = self._table(table)
        returning = self._returning(tbl, q, prefs) or sql.SQL("")
        stmt = sql.SQL("DELETE FROM {tbl}{where}{ret}").format(tbl=tbl, where=q.where(tbl), ret=returning)
        return self._finish_write(200, 204, prefs, q, singular, stmt, auth)

    # -- RPC -----------------------------------------------------------------------------
    def _rpc(self, auth, fn, params, raw, singular):
        srv = self.server
        schema = srv.opts["schema"]
        if self.command == "POST":
            args = self._body_json(raw)
            if args is None:
                args = {}
            if not isinstance(args, dict):
                raise ApiError(400, "PGRST102", "Empty or invalid json")
            qparams = params
        else:
            # Query parameters that name an argument are arguments, the others filters.
            args = {}
            for k, v in params:
                if k not in RESERVED and k not in args:
                    args[k] = v
            qparams = params
        readonly = self.command in ("GET", "HEAD")

        def work(cur):
            cur.execute("""
                SELECT p.proname, p.proargnames, p.proargmodes, p.pronargs, p.pronargdefaults, p.proretset,
                       p.prorettype = 'void'::regtype AS is_void,
                       (t.typtype = 'c' OR p.prorettype = 'record'::regtype) AS is_composite,
                       array(SELECT format_type(x, NULL) FROM unnest(p.proargtypes) WITH ORDINALITY u(x, n)
                             ORDER BY n) AS argtypes
                  FROM pg_proc p
                  JOIN pg_namespace n ON n.oid = p.pronamespace
                  JOIN pg_type t ON t.oid = p.prorettype
                 WHERE n.nspname = %s AND p.proname = %s AND p.prokind = 'f'
            """, (schema, fn))
            candidates = []
            for (name, argnames, argmodes, nargs, ndefaults, retset, is_void, is_comp, argtypes) in cur.fetchall():
                modes = argmodes or ["i"] * len(argnames or argtypes)
                names = argnames or [""] * len(modes)
                inputs = [n for n, m in zip(names, modes) if m in ("i", "b", "v")]
                inputs = list(zip(inputs, argtypes))
                required = {n for n, _ in inputs[:len(inputs) - (ndefaults or 0)]}
                candidates.append((inputs, required, retset, is_void, is_comp))
            keys = set(args.keys())
            chosen = None
            for inputs, required, retset, is_void, is_comp in candidates:
                names = {n for n, _ in inputs}
                if self.command != "POST":
                    usable = keys & names
                    if required <= usable:
                        chosen = (inputs, required, retset, is_void, is_comp, usable)
                        break
                elif keys <= names and required <= keys:
                    chosen = (inputs, required, retset, is_void, is_comp, keys)
                    break
            if chosen is None:
                listed = ", ".join(sorted(keys))
                raise _Rollback(ApiError(
                    404, "PGRST202",
                    "Could not find the function %s.%s(%s) in the schema cache" % (schema, fn, listed),
                    details="Searched for the function %s.%s with parameters %s or with a single unnamed "
                            "json/jsonb parameter, but no matches were found in the schema cache."
                            % (schema, fn, listed or "()"),
                    hint=None))
            inputs, _, retset, is_void, is_comp, used = chosen
            used_inputs = [(n, t) for n, t in inputs if n in used]
            call_args = sql.SQL(", ").join(
                sql.SQL("{n} := _pgrst_args.{n}").format(n=sql.Identifier(n)) for n, _ in used_inputs)
            call = sql.SQL("{}.{}({})").format(sql.Identifier(schema), sql.Identifier(fn), call_args)
            if used_inputs:
                rec = sql.SQL(", ").join(sql.SQL("{} " + t).format(sql.Identifier(n)) for n, t in used_inputs)
                body = {n: args[n] for n, _ in used_inputs}
                source = sql.SQL("json_to_record({}::json) AS _pgrst_args({})").format(
                    sql.Literal(json.dumps(body)), rec)
            else:
                source = sql.SQL("(SELECT 1) AS _pgrst_args")
            filters = [(k, v) for k, v in qparams if self.command == "POST" or k not in used]
            q = Query(filters, self.headers)
            qual = sql.Identifier("_pgrst_call")
            if is_void:
                cur.execute(sql.SQL("SELECT {} FROM {}").format(call, source))
                return ("void", None, None, None, None)
            if is_comp:
                inner = sql.SQL("SELECT {sel} FROM {src}, LATERAL {call} _pgrst_call{where}{tail}").format(
                    sel=parse_select(qual, q.select), src=source, call=call, where=q.where(qual),
                    tail=q.tail(qual))
                cur.execute(self._agg(inner))
                n, arr, first = cur.fetchone()
                return ("set" if retset else "one", n, arr, first, q)
            if retset:
                inner = sql.SQL("SELECT _pgrst_call FROM {src}, LATERAL {call} _pgrst_call{tail}").format(
                    src=source, call=call, tail=q.tail(qual))
                cur.execute(sql.SQL("SELECT count(*), coalesce(json_agg(_pgrst_t._pgrst_call), '[]')::text, "
                                    "(json_agg(_pgrst_t._pgrst_call) -> 0)::text FROM ({}) _pgrst_t").format(inner))
                n, arr, first = cur.fetchone()
                return ("set", n, arr, first, q)
            cur.execute(sql.SQL("SELECT to_json({})::text FROM {}").format(call, source))
            return ("scalar", 1, cur.fetchone()[0], None, q)

        res = self._tx(auth, work, readonly=readonly)
        if isinstance(res, ApiError):
            raise res
        kind, n, arr, first, q = res
        if kind == "void":
            return self._send(204, b"")
        if kind == "scalar":
            return self._send(200, arr if arr is not None else "null")
        if kind == "one":
            return self._send(200, first if first is not None else "null",
                              ctype=(SINGULAR if singular else "application/json") + "; charset=utf-8")
        rng = "*" if n == 0 else "%d-%d" % (q.offset, q.offset + n - 1)
        return self._json_result(200, n, arr, first, singular, {"Content-Range": rng + "/*"})


class _Rollback(Exception):
    def __init__(self, result):
        super().__init__("rollback")
        self.result = result


class Server(fakekit.RecordingServer):
    record_log = False  # the log line is written when the answer is known (flush_log)

    def __init__(self, addr, opts):
        opts = {k: v for k, v in opts.items() if v is not None}
        if not dict(DEFAULTS, **opts).get("database_url"):
            raise ValueError("database_url is required")
        self.log_lock = threading.Lock()
        super().__init__(addr, opts, Handler, DEFAULTS)  # binds; nothing is served before start()
        self.pool = Pool(self.opts)  # shares the options: changes at run time reach the pool
        self.keys = supabase_keys(self.opts["jwt_secret"])

    def flush_log(self, entry):
        if entry is None or not self.opts.get("log"):
            return
        with self.log_lock:
            with open(self.opts["log"], "a") as f:
                f.write(json.dumps(entry, default=str) + "\n")

    def should_fail(self):
        with self.lock:
            if int(self.opts.get("fail_next") or 0) > 0:
                self.opts["fail_next"] = int(self.opts["fail_next"]) - 1
                return True
            rate = float(self.opts.get("fail_rate") or 0)
            return rate > 0 and self.rng.random() < rate

    def create_auth_user(self, body):
        """As GoTrue's sign-up: a row in auth.users (the trigger makes public.users)."""
        conn = psycopg2.connect(self.opts["database_url"], connect_timeout=int(self.opts["connect_timeout"]))
        try:
            with conn, conn.cursor() as cur:
                cur.execute("INSERT INTO auth.users (id, email, raw_user_meta_data) "
                            "VALUES (coalesce(%s::uuid, gen_random_uuid()), %s, coalesce(%s::jsonb, '{}'::jsonb)) "
                            "RETURNING id::text",
                            (body.get("id"), body.get("email"),
                             json.dumps(body["raw_user_meta_data"]) if body.get("raw_user_meta_data") else None))
                return {"id": cur.fetchone()[0]}
        finally:
            conn.close()

    def close(self):
        super().close()
        self.pool.close_all()


def start(port=0, host="127.0.0.1", **opts):
    """Starts the server in a daemon thread. Returns (server, thread, port)."""
    return fakekit.serve(Server((host, port), opts))


def main():
    p = argparse.ArgumentParser(description="PostgREST-compatible double (Supabase /rest/v1) on a real PostgreSQL")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--db", "--database-url", dest="database_url", required=True,
                   help="libpq URL of the migrated database (a role that may SET ROLE to anon, "
                        "authenticated and service_role: the superuser, or authenticator)")
    p.add_argument("--jwt-secret", default=DEFAULT_JWT_SECRET)
    p.add_argument("--schema", default="public")
    p.add_argument("--prefix", default="/rest/v1")
    p.add_argument("--pool-size", type=int, default=10)
    p.add_argument("--pool-timeout", type=float, default=10.0)
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--fail-next", type=int, default=0)
    p.add_argument("--fail-mode", choices=("status", "drop"), default="status")
    p.add_argument("--fail-status", type=int, default=503)
    p.add_argument("--delay-ms", type=int, default=0)
    p.add_argument("--seed", type=int)
    p.add_argument("--log")
    a = p.parse_args()

    def stop(*_):
        raise KeyboardInterrupt
    # SIGTERM and SIGINT stop it, even when started with SIGINT ignored (a background job).
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server, thread, port = start(port=a.port, host=a.host, database_url=a.database_url, jwt_secret=a.jwt_secret,
                                 schema=a.schema, prefix=a.prefix, pool_size=a.pool_size,
                                 pool_timeout=a.pool_timeout, fail_rate=a.fail_rate, fail_next=a.fail_next,
                                 fail_mode=a.fail_mode, fail_status=a.fail_status, delay_ms=a.delay_ms,
                                 seed=a.seed, log=a.log)
    print("postgrest listening on http://%s:%d%s" % (a.host, port, a.prefix), flush=True)
    print("anon_key=%s" % server.keys["anon"], flush=True)
    print("service_role_key=%s" % server.keys["service_role"], flush=True)
    try:
        thread.join()
    except KeyboardInterrupt:
        pass
    server.close()


if __name__ == "__main__":
    sys.exit(main())
