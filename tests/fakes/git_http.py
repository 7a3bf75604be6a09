#!/usr/bin/python3
"""Git smart HTTP server for tests: `git http-backend` (CGI) over stdlib http.server.

    python3 tests/fakes/git_http.py --port 18300 --root /tmp/repos [--require-token T]
        [--public] [--fail-rate 0.2] [--delay-ms 50] [--fail-next 1] [--fail-service receive-pack]
        [--make-repo owner/repo] [--log requests.jsonl]

    from git_http import start, make_repo
    root = tempfile.mkdtemp()
    make_repo(root, "octo/demo", {"README.md": "hi\\n"}, binary=True, executable=True)
    server, thread, port = start(root=root, require_token="ghs_x")
    # git clone http://x-access-token:ghs_x@127.0.0.1:<port>/octo/demo.git  (or via a credential helper)
    server.requests            # every request: method, path, query, headers, body_size, user, status
    server.opts["fail_next"] = 1   # fault injection can be changed at run time
    server.close()

URLs are http://HOST:PORT/<owner>/<repo>.git (the ".git" may be left out, as with GitHub).
Repositories live at <root>/<owner>/<repo>.git (GIT_PROJECT_ROOT=<root>, GIT_HTTP_EXPORT_ALL=1,
http.receivepack=true so pushes work). Chunked request bodies (git sends big pushes chunked) are
de-chunked before they reach the CGI, and the CGI "Status:" header becomes the HTTP status.

Auth (optional): with require_token, every request (with --public: only pushes) needs HTTP Basic
auth whose password is one of the tokens (any user name, GitHub style "x-access-token:TOKEN"),
otherwise 401 with `WWW-Authenticate: Basic realm="git"`, which makes git ask its credential helper.

Control endpoints (not logged; fakekit.py): GET /_fake/requests, POST /_fake/config (JSON merged
into the options), POST /_fake/reset (clears the request log).
"""
import argparse
import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

try:
    from . import fakekit
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import fakekit

DEFAULTS = {
    "root": None,             # GIT_PROJECT_ROOT (required)
    "require_token": None,    # str or list of str: accepted Basic-auth passwords
    "public": False,          # with require_token: clone/fetch need no auth, pushes do
    "fail_rate": 0.0,         # probability of answering 500 instead of serving
    "fail_next": 0,           # answer the next N requests with 500
    "fail_service": None,     # limit fail_rate/fail_next to "upload-pack" or "receive-pack"
    "delay_ms": 0,            # sleep before answering each request
    "log": None,              # JSON lines file, one line per request
    "seed": None,             # random seed for fail_rate
}

GIT_ENV = {  # deterministic commits for make_repo
    "GIT_AUTHOR_NAME": "Fixture", "GIT_AUTHOR_EMAIL": "fixture@example.test",
    "GIT_COMMITTER_NAME": "Fixture", "GIT_COMMITTER_EMAIL": "fixture@example.test",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
}
BINARY_BYTES = bytes(range(256)) * 4 + b"\x00\xff binary fixture\n"


# -- repository helpers -----------------------------------------------------------------------

def repo_path(root, name):
    """<root>/<owner>/<repo>.git for name "owner/repo" or "owner/repo.git"."""
    name = name.strip("/")
    if not name.endswith(".git"):
        name += ".git"
    return os.path.join(root, name)


def _git(args, cwd=None, env=None, input=None, check=True):
    e = dict(os.environ)
    e.update(GIT_ENV)
    if env:
        e.update(env)
    r = subprocess.run(["git"] + args, cwd=cwd, env=e, input=input, capture_output=True)
    if check and r.returncode != 0:
        raise RuntimeError("git %s failed: %s" % (" ".join(args), r.stderr.decode(errors="replace")))
    return r


def make_repo(root, name, files, branch="main", binary=False, executable=False, message="Initial commit"):
    """Creates a bare repository <root>/<name>.git whose branch `branch` has one commit with `files`.

    files: {path: content}; content is str (text), bytes (binary) or (content, mode) with mode
    0o755 for an executable. binary=True adds assets/logo.bin (1 KiB of all byte values),
    executable=True adds scripts/run.sh (mode 755). Returns the bare repository's path.
    """
    bare = repo_path(root, name)
    os.makedirs(os.path.dirname(bare), exist_ok=True)
    _git(["init", "-q", "--bare", "-b", branch, bare])
    _git(["config", "http.receivepack", "true"], cwd=bare)
    files = dict(files or {})
    if binary:
        files.setdefault("assets/logo.bin", BINARY_BYTES)
    if executable:
        files.setdefault("scripts/run.sh", ("#!/bin/sh\necho run\n", 0o755))
    work = tempfile.mkdtemp(prefix="fake-git-work-")
    index_dir = tempfile.mkdtemp(prefix="fake-git-index-")
    try:
        for path, content in files.items():
            mode = None
            if isinstance(content, tuple):
                content, mode = content
            full = os.path.join(work, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(content.encode() if isinstance(content, str) else content)
            if mode is not None:
                os.chmod(full, mode)
        env = {"GIT_DIR": bare, "GIT_WORK_TREE": work, "GIT_INDEX_FILE": os.path.join(index_dir, "index")}
        _git(["add", "-A", "--", "."], cwd=work, env=env)
        _git(["commit", "-q", "--allow-empty", "-m", message], cwd=work, env=env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(index_dir, ignore_errors=True)
    return bare


def ref_sha(root, name, branch):
    """The commit sha of refs/heads/<branch> in the bare repo, or None."""
    r = _git(["rev-parse", "--verify", "-q", "refs/heads/%s^{commit}" % branch], cwd=repo_path(root, name),
             check=False)
    return r.stdout.decode().strip() if r.returncode == 0 else None


def branches(root, name):
    """{branch: sha} of the bare repo."""
    r = _git(["for-each-ref", "--format=%(refname:strip=2) %(objectname)", "refs/heads"],
             cwd=repo_path(root, name))
    return dict(line.split(" ", 1) for line in r.stdout.decode().splitlines() if line)


def default_branch(root, name):
    r = _git(["symbolic-ref", "--short", "HEAD"], cwd=repo_path(root, name), check=False)
    return r.stdout.decode().strip() if r.returncode == 0 else "main"


def read_file(root, name, ref, path):
    """Bytes of `path` at `ref` in the bare repo, or None when absent."""
    r = _git(["cat-file", "blob", "%s:%s" % (ref, path)], cwd=repo_path(root, name), check=False)
    return r.stdout if r.returncode == 0 else None


def tree(root, name, ref):
    """{path: (mode, sha)} of every file at `ref` (modes as git prints them: 100644, 100755, 120000)."""
    r = _git(["ls-tree", "-r", "-z", ref], cwd=repo_path(root, name))
    out = {}
    for entry in r.stdout.decode().split("\0"):
        if entry:
            meta, path = entry.split("\t", 1)
            mode, _type, sha = meta.split()
            out[path] = (mode, sha)
    return out


# -- HTTP server ------------------------------------------------------------------------------

class Handler(fakekit.Handler):
    server_version = "fake-git-http/1"

    # request body, de-chunked
    def _body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status, body=b"", headers=None):
        self._send_bytes(status, body, headers)

    def _auth_user(self):
        """(ok, user): checks Basic auth against the configured tokens."""
        tokens = self.server.opts.get("require_token")
        if not tokens:
            return True, ""
        if isinstance(tokens, str):
            tokens = [tokens]
        h = self.headers.get("Authorization") or ""
        if not h.lower().startswith("basic "):
            return False, ""
        try:
            user, _, pw = base64.b64decode(h[6:].strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False, ""
        return pw in tokens, user

    def _handle(self):
        self.entry = None
        url = urllib.parse.urlsplit(self.path)
        body = self._body()
        if url.path.startswith("/_fake/"):
            return self._control(url.path, body)
        srv, opts = self.server, self.server.opts
        query = urllib.parse.parse_qs(url.query)
        service = (query.get("service", [""])[0] or url.path.rsplit("/", 1)[-1]).replace("git-", "")
        self.entry = srv.record({
            "method": self.command, "path": url.path, "query": query,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body_size": len(body), "service": service,
        })
        if opts.get("delay_ms"):
            time.sleep(opts["delay_ms"] / 1000.0)
        if opts.get("fail_service") in (None, "", service):
            fail = False
            with srv.lock:
                if opts.get("fail_next", 0) > 0:
                    opts["fail_next"] -= 1
                    fail = True
            if fail or (opts.get("fail_rate") and srv.rng.random() < opts["fail_rate"]):
                return self._send(500, b"injected failure\n", {"Content-Type": "text/plain"})
        ok, user = self._auth_user()
        self.entry["user"] = user
        if not ok and not (opts.get("public") and service != "receive-pack"):
            return self._send(401, b"Authentication required\n",
                              {"WWW-Authenticate": 'Basic realm="git"', "Content-Type": "text/plain"})
        self._cgi(url, body, user)

    def _cgi(self, url, body, user):
        root = self.server.opts["root"]
        path_info = urllib.parse.unquote(url.path)
        # GitHub-style URLs without ".git": /owner/repo/info/refs -> /owner/repo.git/info/refs
        parts = path_info.strip("/").split("/")
        if len(parts) >= 3 and not parts[1].endswith(".git") \
                and not os.path.isdir(os.path.join(root, parts[0], parts[1])) \
                and os.path.isdir(os.path.join(root, parts[0], parts[1] + ".git")):
            parts[1] += ".git"
            path_info = "/" + "/".join(parts)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": os.path.abspath(root), "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path_info, "QUERY_STRING": url.query, "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type") or "",
            "CONTENT_LENGTH": str(len(body)), "REMOTE_USER": user or "anonymous",
            "REMOTE_ADDR": self.client_address[0], "SERVER_PROTOCOL": "HTTP/1.1",
            "GIT_PROTOCOL": self.headers.get("Git-Protocol") or "",
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding") or "",
            "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*",
        }
        r = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        out = r.stdout
        seps = [(i, n) for i, n in ((out.find(b"\r\n\r\n"), 4), (out.find(b"\n\n"), 2)) if i >= 0]
        sep, cut = min(seps) if seps else (-1, 0)
        if sep < 0:
            return self._send(500, b"bad CGI output: " + r.stderr[-500:], {"Content-Type": "text/plain"})
        status, headers = 200, {}
        for line in out[:sep].decode("latin-1").splitlines():
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k:
                headers[k.strip()] = v.strip()
        if r.stderr:
            self.entry["stderr"] = r.stderr.decode(errors="replace")[-2000:]
        self._send(status, out[sep + cut:], headers)

    do_GET = do_POST = do_HEAD = _handle


class Server(fakekit.RecordingServer):
    def __init__(self, addr, opts):
        if not dict(DEFAULTS, **opts).get("root"):
            raise ValueError("root (the GIT_PROJECT_ROOT directory) is required")
        super().__init__(addr, opts, Handler, DEFAULTS)


def start(port=0, host="127.0.0.1", **opts):
    """Starts the server in a daemon thread. Returns (server, thread, port)."""
    return fakekit.serve(Server((host, port), opts))


def main():
    p = argparse.ArgumentParser(description="git smart HTTP test server (git http-backend)")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--root", help="GIT_PROJECT_ROOT (default: a new temp dir)")
    p.add_argument("--require-token", action="append", help="accepted Basic-auth password (repeatable)")
    p.add_argument("--public", action="store_true", help="with --require-token: only pushes need auth")
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--fail-next", type=int, default=0)
    p.add_argument("--fail-service", choices=["upload-pack", "receive-pack"])
    p.add_argument("--delay-ms", type=int, default=0)
    p.add_argument("--seed", type=int)
    p.add_argument("--log", help="append one JSON line per request to this file")
    p.add_argument("--make-repo", action="append", default=[], metavar="OWNER/REPO",
                   help="create a bare repo with README.md, a binary and an executable file")
    a = p.parse_args()
    root = a.root or tempfile.mkdtemp(prefix="fake-git-root-")
    for name in a.make_repo:
        if not os.path.isdir(repo_path(root, name)):
            make_repo(root, name, {"README.md": "# %s\n" % name}, binary=True, executable=True)
    server, thread, port = start(port=a.port, host=a.host, root=root, require_token=a.require_token,
                                 public=a.public, fail_rate=a.fail_rate, fail_next=a.fail_next,
                                 fail_service=a.fail_service, delay_ms=a.delay_ms, seed=a.seed, log=a.log)
    print("git_http listening on http://%s:%d root=%s" % (a.host, port, root), flush=True)
    try:
        thread.join()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
