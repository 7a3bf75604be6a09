#!/usr/bin/python3
"""A fake GitHub REST API (the endpoints a pull-request flow uses), backed by the bare
repositories that git_http.py serves, so branches and pull-request heads are real git refs.

    python3 tests/fakes/github_api.py --port 18400 --root /tmp/repos \
        --token ghs_good:octocat:write [--token ghp_ro:viewer:read] [--private octo/demo] \
        [--fail-rate 0.1] [--fail-next 1] [--rate-limit-next 1] [--delay-ms 50] [--log gh.jsonl]

    from github_api import start
    server, thread, port = start(root=root, tokens={"ghs_good": "octocat"})   # GITHUB_API_URL
    server.requests   # every request: method, path, query, headers, body (parsed JSON), status
    server.pulls      # {"owner/repo": [pull request objects]}

Endpoints (shapes from docs.github.com/rest; "/api/v3" prefix, as GitHub Enterprise, also works):
    GET  /user                                 login of the token's user
    GET  /repos/{owner}/{repo}                 full_name, private, default_branch, permissions{...}
    GET  /repos/{owner}/{repo}/branches/{branch}
    GET  /repos/{owner}/{repo}/pulls?head=owner:branch&base=main&state=open|closed|all
    GET  /repos/{owner}/{repo}/pulls/{number}
    POST /repos/{owner}/{repo}/pulls {title, head, base, body, draft} -> 201

Tokens: tokens={token: login} or {token: (login, role)}, role "admin" | "write" (default) | "read";
`Authorization: Bearer <t>` or `token <t>`. A token not in the set -> 401 "Bad credentials".
No Authorization: public repos can be read (without "permissions"); private ones are 404;
writes -> 401 "Requires authentication". A "read" role -> 403 on POST /pulls.
Like GitHub, a request without a User-Agent header is refused with 403 (require_user_agent).

Faults: fail_rate / fail_next (500 {"message":"Server Error"}), rate_limit_next (403 "API rate
limit exceeded" with x-ratelimit-remaining: 0), delay_ms. Control endpoints (not logged; fakekit.py):
GET /_fake/requests, POST /_fake/config, POST /_fake/reset (clears the log and the pulls).
"""
import argparse
import json
import os
import sys
import time
import urllib.parse

try:
    from . import fakekit, git_http
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import fakekit
    import git_http

DOCS = "https://docs.github.com/rest"
DEFAULTS = {
    "root": None,                # the git_http.py repo root (<root>/<owner>/<repo>.git)
    "tokens": {},                # {token: login} or {token: [login, role]}
    "private": [],               # ["owner/repo", ...] repos that are private
    "html_base": "https://github.com",  # base of html_url / clone_url in answers
    "require_user_agent": True,  # GitHub refuses requests without User-Agent
    "fail_rate": 0.0, "fail_next": 0, "rate_limit_next": 0, "delay_ms": 0,
    "log": None, "seed": None,
}
PERMS = {
    "admin": {"admin": True, "maintain": True, "push": True, "triage": True, "pull": True},
    "write": {"admin": False, "maintain": False, "push": True, "triage": True, "pull": True},
    "read": {"admin": False, "maintain": False, "push": False, "triage": False, "pull": True},
}


def _stable_id(s):
    return sum((i + 1) * b for i, b in enumerate(s.encode())) % 10_000_000 + 1000


def _user_obj(login, html_base):
    return {"login": login, "id": _stable_id(login), "node_id": "U_" + login, "type": "User",
            "site_admin": False, "html_url": "%s/%s" % (html_base, login)}


class ApiError(Exception):
    def __init__(self, status, message, doc=DOCS, errors=None, headers=None):
        self.status = status
        self.body = {"message": message, "documentation_url": doc, "status": str(status)}
        if errors is not None:
            self.body["errors"] = errors
        self.headers = headers or {}


class Handler(fakekit.Handler):
    server_version = "GitHub.com"

    def _send(self, status, obj, headers=None):
        body = b"" if obj is None else (json.dumps(obj, indent=2) + "\n").encode()
        srv = self.server
        hdrs = {
            "Content-Type": "application/json; charset=utf-8",
            "X-GitHub-Api-Version-Selected": "2022-11-28",
            "X-GitHub-Request-Id": "FAKE:%04X" % (self.entry["seq"] if self.entry else 0),
            "X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": str(max(0, 5000 - srv.used)),
            "X-RateLimit-Reset": str(int(time.time()) + 3600), "X-RateLimit-Used": str(srv.used),
            "X-RateLimit-Resource": "core",
        }
        hdrs.update(headers or {})
        self._send_bytes(status, body, hdrs)

    def _send_json(self, status, obj):  # the control routes
        self._send(status, obj)

    def _handle(self):
        req = self._json_request()
        if req is None:  # a control route, answered
            return
        url, body = req
        srv, opts = self.server, self.server.opts
        if opts.get("delay_ms"):
            time.sleep(opts["delay_ms"] / 1000.0)
        try:
            with srv.lock:
                srv.used += 1
                fail = opts.get("fail_next", 0) > 0
                if fail:
                    opts["fail_next"] -= 1
                limited = opts.get("rate_limit_next", 0) > 0
                if limited and not fail:
                    opts["rate_limit_next"] -= 1
            if fail or (opts.get("fail_rate") and srv.rng.random() < opts["fail_rate"]):
                return self._send(500, {"message": "Server Error"})
            if limited:
                raise ApiError(403, "API rate limit exceeded for user ID 1. If you reach out to GitHub "
                               "Support for help, please include the request ID FAKE.",
                               DOCS + "/overview/rate-limits-for-the-rest-api",
                               headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Used": "5000",
                                        "X-RateLimit-Reset": str(int(time.time()) + 60)})
            if opts.get("require_user_agent") and not self.headers.get("User-Agent"):
                raise ApiError(403, "Request forbidden by administrative rules. Please make sure your "
                               "request has a User-Agent header "
                               "(https://docs.github.com/en/rest/overview/resources-in-the-rest-api"
                               "#user-agent-required)."
                               " Check https://developer.github.com for other possible causes.")
            status, obj, headers = self._route(url, body)
            self._send(status, obj, headers)
        except ApiError as e:
            self._send(e.status, e.body, e.headers)

    # -- auth --------------------------------------------------------------------------------
    def _who(self):
        """(login, role) of the caller, None when anonymous; raises 401 for unknown tokens."""
        h = (self.headers.get("Authorization") or "").strip()
        if not h:
            return None
        scheme, _, tok = h.partition(" ")
        tokens = self.server.opts.get("tokens") or {}
        if scheme.lower() not in ("bearer", "token") or tok.strip() not in tokens:
            raise ApiError(401, "Bad credentials")
        v = tokens[tok.strip()]
        login, role = (v, "write") if isinstance(v, str) else (v[0], v[1] if len(v) > 1 else "write")
        return login, role

    def _repo(self, owner, repo, who):
        root = self.server.opts["root"]
        full = "%s/%s" % (owner, repo)
        private = full in (self.server.opts.get("private") or [])
        if repo.endswith(".git") or not os.path.isdir(git_http.repo_path(root, full)) or (private and not who):
            raise ApiError(404, "Not Found", DOCS + "/repos/repos#get-a-repository")
        return full, private

    # -- routes ------------------------------------------------------------------------------
    def _route(self, url, body):
        path = url.path
        if path.startswith("/api/v3/"):
            path = path[len("/api/v3"):]
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        query = urllib.parse.parse_qs(url.query)
        who = self._who()
        opts = self.server.opts
        hb = opts.get("html_base", "https://github.com")
        m = self.command
        if parts == ["user"] and m == "GET":
            if not who:
                raise ApiError(401, "Requires authentication", DOCS + "/users/users#get-the-authenticated-user")
            u = _user_obj(who[0], hb)
            u.update({"name": who[0], "email": None})
            return 200, u, {"X-OAuth-Scopes": "repo", "X-Accepted-OAuth-Scopes": ""}
        if len(parts) < 3 or parts[0] != "repos":
            raise ApiError(404, "Not Found")
        owner, repo, rest = parts[1], parts[2], parts[3:]
        full, private = self._repo(owner, repo, who)
        root = opts["root"]
        if not rest and m == "GET":
            return 200, self._repo_obj(full, private, who, hb), None
        if len(rest) >= 2 and rest[0] == "branches" and m == "GET":
            branch = "/".join(rest[1:])
            sha = git_http.ref_sha(root, full, branch)
            if not sha:
                raise ApiError(404, "Branch not found", DOCS + "/branches/branches#get-a-branch")
            api = "http://%s/repos/%s" % (self.headers.get("Host", "api.github.com"), full)
            return 200, {"name": branch, "commit": {"sha": sha, "url": "%s/commits/%s" % (api, sha)},
                         "_links": {"self": "%s/branches/%s" % (api, branch),
                                    "html": "%s/%s/tree/%s" % (hb, full, branch)},
                         "protected": False}, None
        if rest == ["pulls"] and m == "GET":
            state = query.get("state", ["open"])[0]
            head = query.get("head", [None])[0]
            base = query.get("base", [None])[0]
            with self.server.lock:
                pulls = list(self.server.pulls.get(full, []))
            out = [p for p in pulls if (state == "all" or p["state"] == state)
                   and (head is None or p["head"]["label"] == (head if ":" in head else "%s:%s" % (owner, head)))
                   and (base is None or p["base"]["ref"] == base)]
            return 200, sorted(out, key=lambda p: -p["number"]), None
        if len(rest) == 2 and rest[0] == "pulls" and rest[1].isdigit() and m == "GET":
            with self.server.lock:
                for p in self.server.pulls.get(full, []):
                    if p["number"] == int(rest[1]):
                        return 200, p, None
            raise ApiError(404, "Not Found", DOCS + "/pulls/pulls#get-a-pull-request")
        if rest == ["pulls"] and m == "POST":
            return self._create_pull(full, owner, private, who, body, hb)
        raise ApiError(404, "Not Found")

    def _repo_obj(self, full, private, who, hb):
        owner, name = full.split("/")
        api = "http://%s/repos/%s" % (self.headers.get("Host", "api.github.com"), full)
        obj = {"id": _stable_id(full), "node_id": "R_" + full, "name": name, "full_name": full,
               "private": private, "visibility": "private" if private else "public",
               "owner": _user_obj(owner, hb), "html_url": "%s/%s" % (hb, full), "url": api,
               "clone_url": "%s/%s.git" % (hb, full), "fork": False, "archived": False, "disabled": False,
               "default_branch": git_http.default_branch(self.server.opts["root"], full)}
        if who:
            obj["permissions"] = dict(PERMS.get(who[1], PERMS["read"]))
        return obj

    def _create_pull(self, full, owner, private, who, body, hb):
        doc = DOCS + "/pulls/pulls#create-a-pull-request"
        if not who:
            raise ApiError(401, "Requires authentication", doc)
        if not PERMS.get(who[1], PERMS["read"])["push"]:
            raise ApiError(403, "Resource not accessible by personal access token", doc)
        if not isinstance(body, dict):
            raise ApiError(400, "Problems parsing JSON", doc)
        for field in ("head", "base"):
            if not isinstance(body.get(field), str) or not body[field]:
                raise ApiError(422, 'Invalid request.\n\n"%s" wasn\'t supplied.' % field, doc)
        if not body.get("title") and not body.get("issue"):
            raise ApiError(422, 'Invalid request.\n\n"title" wasn\'t supplied.', doc)
        head, base = body["head"], body["base"]
        head_owner, _, head_ref = head.rpartition(":")
        head_owner = head_owner or owner
        root = self.server.opts["root"]
        errors = []
        head_sha = git_http.ref_sha(root, full, head_ref) if head_owner == owner else None
        base_sha = git_http.ref_sha(root, full, base)
        if not head_sha:
            errors.append({"resource": "PullRequest", "field": "head", "code": "invalid"})
        if not base_sha:
            errors.append({"resource": "PullRequest", "field": "base", "code": "invalid"})
        if errors:
            raise ApiError(422, "Validation Failed", doc, errors)
        label = "%s:%s" % (owner, head_ref)
        with self.server.lock:
            pulls = self.server.pulls.setdefault(full, [])
            if any(p["state"] == "open" and p["head"]["label"] == label and p["base"]["ref"] == base for p in pulls):
                raise ApiError(422, "Validation Failed", doc, [{
                    "resource": "PullRequest", "code": "custom",
                    "message": "A pull request already exists for %s." % label}])
        r = git_http._git(["merge-base", "--is-ancestor", head_sha, base_sha], cwd=git_http.repo_path(root, full),
                          check=False)
        if r.returncode == 0:
            raise ApiError(422, "Validation Failed", doc, [{
                "resource": "PullRequest", "code": "custom",
                "message": "No commits between %s and %s" % (base, head_ref)}])
        api = "http://%s/repos/%s" % (self.headers.get("Host", "api.github.com"), full)
        repo_obj = self._repo_obj(full, private, None, hb)
        with self.server.lock:
            pulls = self.server.pulls.setdefault(full, [])
            number = self.server.next_number.get(full, 1)
            self.server.next_number[full] = number + 1
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            pr = {"url": "%s/pulls/%d" % (api, number), "id": _stable_id(full) * 1000 + number,
                  "node_id": "PR_%s_%d" % (full, number), "number": number, "state": "open", "locked": False,
                  "title": body.get("title") or "", "body": body.get("body"), "draft": bool(body.get("draft")),
                  "html_url": "%s/%s/pull/%d" % (hb, full, number),
                  "diff_url": "%s/%s/pull/%d.diff" % (hb, full, number),
                  "user": _user_obj(who[0], hb), "created_at": now, "updated_at": now,
                  "merged": False, "mergeable": None, "merged_at": None, "closed_at": None,
                  "head": {"label": label, "ref": head_ref, "sha": head_sha, "user": _user_obj(owner, hb),
                           "repo": repo_obj},
                  "base": {"label": "%s:%s" % (owner, base), "ref": base, "sha": base_sha,
                           "user": _user_obj(owner, hb), "repo": repo_obj}}
            pulls.append(pr)
        return 201, pr, {"Location": pr["url"]}

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _handle


class Server(fakekit.RecordingServer):
    def __init__(self, addr, opts):
        if not dict(DEFAULTS, **opts).get("root"):
            raise ValueError("root (the git_http.py repository root) is required")
        self.pulls = {}
        self.next_number = {}
        self.used = 0
        super().__init__(addr, opts, Handler, DEFAULTS)

    def reset_state(self):
        self.pulls.clear()


def start(port=0, host="127.0.0.1", **opts):
    """Starts the server in a daemon thread. Returns (server, thread, port)."""
    return fakekit.serve(Server((host, port), opts))


def main():
    p = argparse.ArgumentParser(description="fake GitHub REST API backed by git_http.py repos")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--root", required=True, help="the git_http.py repository root")
    p.add_argument("--token", action="append", default=[], metavar="TOKEN[:LOGIN[:ROLE]]",
                   help="accepted token, its user (default octocat) and role admin|write|read (default write)")
    p.add_argument("--private", action="append", default=[], metavar="OWNER/REPO")
    p.add_argument("--html-base", default="https://github.com")
    p.add_argument("--no-require-user-agent", action="store_true")
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--fail-next", type=int, default=0)
    p.add_argument("--rate-limit-next", type=int, default=0)
    p.add_argument("--delay-ms", type=int, default=0)
    p.add_argument("--seed", type=int)
    p.add_argument("--log")
    a = p.parse_args()
    tokens = {}
    for spec in a.token:
        tok, login, role = (spec.split(":") + ["octocat", "write"])[:3]
        tokens[tok] = [login or "octocat", role or "write"]
    server, thread, port = start(port=a.port, host=a.host, root=a.root, tokens=tokens, private=a.private,
                                 html_base=a.html_base, require_user_agent=not a.no_require_user_agent,
                                 fail_rate=a.fail_rate, fail_next=a.fail_next, rate_limit_next=a.rate_limit_next,
                                 delay_ms=a.delay_ms, seed=a.seed, log=a.log)
    print("github_api listening on http://%s:%d root=%s" % (a.host, port, a.root), flush=True)
    try:
        thread.join()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
