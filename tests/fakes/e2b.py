#!/usr/bin/python3
"""A local E2B double: the control-plane REST API and envd's data plane (Connect RPC with
the JSON codec, plain-HTTP /files), with commands really executed under bubblewrap.

    python3 tests/fakes/e2b.py --port 18500 --api-key e2b_0123abcd [--log requests.jsonl]
        [--root DIR] [--template NAME]... [--agent-template NAME]... [--tools-dir DIR]
        [--create-delay-ms MS] [--create-429-next N] [--retry-after S] [--create-5xx-next N]
        [--create-5xx-status 500|502|503|504] [--drop-stream-next N] [--drop-after-events K]
        [--stream-error-next N] [--stream-error-after-events K] [--start-delay-ms MS]
        [--expire-next N] [--expire-after-s S] [--envd-unavailable-next N]
        [--envd-unavailable-status 502|503] [--keepalive-default-s S] [--exit-retention-s S]
        [--max-sandboxes N] [--max-length-hours H] [--sandbox-not-found-status 502|404]
        [--list-5xx-next N] [--list-bad-token-next N] [--list-endless]

    import e2b
    server, thread, port = e2b.start(port=0, api_key="e2b_0123abcd")
    server.url                      # http://127.0.0.1:PORT: E2B_API_URL *and* E2B_SANDBOX_URL
    server.opts["drop_stream_next"] = 1     # faults can change at run time (or POST /_control)
    server.sandboxes                # {sandboxID: Sandbox} of the live sandboxes
    server.close()                  # kills every sandbox, removes its files, stops the server

One port serves both planes. A request with an `E2b-Sandbox-Id` header (SDK header routing,
what E2B_SANDBOX_URL does) or a Host of the form `49983-<sandboxID>.<domain>` goes to that
sandbox's envd; anything else is the control plane. The wire format is written up in
tests/fakes/E2B.md (for client authors) and comes from ../shared/reference/e2b-and-peers.md
Part 1 (E2B's openapi.yml, envd's process.proto / envd.yaml and infra's envd sources).

Each sandbox is a directory under --root: home/ (bound at /home/user), tmp/ (bound at /tmp,
kept across commands as in a real sandbox) and root/ (/root). Every process runs as
`setpriv --reuid=65534 ... bwrap --unshare-user --uid 1000 ...` (uid 0 for user "root"), with
/usr read-only, a minimal /etc, its own pid/ipc/uts namespaces and the host network. Templates
listed as agent templates also get tools/agents (the pinned Claude Code and Codex CLIs) at
/opt/aicode/tools, with `claude` and `codex` in /usr/local/bin, like the template in e2b/.

Control endpoints (not logged, no auth): GET /_control (options, live sandboxes and their
processes, killed sandboxes), POST /_control (JSON merged into the options, plus actions
"expire", "kill", "reset_log"); GET /_fake/requests, POST /_fake/config, POST /_fake/reset as
in the other fakes.
"""
import argparse
import base64
import calendar
import gzip
import hashlib
import hmac
import http.server
import json
import os
import posixpath
import queue
import re
import secrets
import select
import shutil
import signal
import socket
import string
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ENVD_PORT = "49983"
HOST_UID = 65534  # the unprivileged host user every sandboxed process runs as

DEFAULTS = {
    "api_key": "e2b_00000000000000000000000000000000",  # str or list of accepted X-API-Key values
    "root": None,               # sandboxes' directories (default: a temp dir removed at close)
    "log": None,                # JSON lines file, one line per request
    "templates": ["base", "aicode-agents"],    # known template aliases (IDs are derived)
    "agent_templates": ["aicode-agents"],      # templates that have the agent CLIs
    "tools_dir": os.path.join(REPO, "tools", "agents"),  # bound at /opt/aicode/tools
    "envd_version": "0.6.13",
    "domain": None,             # Sandbox.domain in responses (null = the client's default)
    "max_sandboxes": 100,       # concurrent sandboxes before 429 (team concurrency cap)
    "max_length_hours": 24,     # max timeout (team max_length_hours)
    "keepalive_default_s": 90,  # envd's default when Keepalive-Ping-Interval is absent
    "exit_retention_s": 30,     # how long Connect still returns start+end after an exit
    "sandbox_not_found_status": 502,  # what the edge proxy answers for a gone sandbox
    # faults
    "create_delay_ms": 0,       # sleep before answering POST /sandboxes
    "create_429_next": 0,       # the next N creates answer 429 Rate limit exceeded
    "retry_after": 1,           # Retry-After (seconds) on those 429s
    "create_5xx_next": 0,       # the next N creates answer create_5xx_status
    "create_5xx_status": 500,
    "drop_stream_next": 0,      # the next N Start streams: TCP closed after drop_after_events data events
    "drop_after_events": 1,
    "stream_error_next": 0,     # the next N Start streams: EndStream {"error":{"code":"unavailable"}} after K data events
    "stream_error_after_events": 1,
    "start_delay_ms": 0,        # delay before the start event of Start streams
    "expire_next": 0,           # the next N sandboxes die after expire_after_s, whatever their timeout
    "expire_after_s": 1.0,
    "envd_unavailable_next": 0,  # the next N envd requests answer envd_unavailable_status (edge proxy page)
    "envd_unavailable_status": 502,
    "envd_down": False,         # every envd request answers envd_unavailable_status until turned off
    "list_5xx_next": 0,         # the next N GET /v2/sandboxes answer 500 Error when getting sandboxes
    "list_bad_token_next": 0,   # the next N list pages that have a next page carry an X-Next-Token that does not parse
    "list_endless": False,      # every list page carries a (new) X-Next-Token, past the end one that starts over
}

CONNECT_HTTP = {
    "canceled": 499, "unknown": 500, "invalid_argument": 400, "deadline_exceeded": 504, "not_found": 404,
    "already_exists": 409, "permission_denied": 403, "resource_exhausted": 429, "failed_precondition": 400,
    "aborted": 409, "out_of_range": 400, "unimplemented": 501, "internal": 500, "unavailable": 503,
    "data_loss": 500, "unauthenticated": 401,
}
SIGNALS = {"SIGNAL_SIGKILL": 9, "SIGNAL_SIGTERM": 15, 9: 9, 15: 15}
GO_SIGNAL_TEXT = {1: "hangup", 2: "interrupt", 3: "quit", 4: "illegal instruction", 5: "trace/breakpoint trap",
                  6: "aborted", 7: "bus error", 8: "floating point exception", 9: "killed",
                  10: "user defined signal 1", 11: "segmentation fault", 12: "user defined signal 2",
                  13: "broken pipe", 14: "alarm clock", 15: "terminated"}
USERS = {"user": (1000, "/home/user"), "root": (0, "/root")}
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ETC_FILES = ["alternatives", "ssl/certs", "ssl/openssl.cnf", "ca-certificates", "ca-certificates.conf",
             "hosts", "resolv.conf", "nsswitch.conf", "host.conf", "gai.conf", "localtime", "timezone",
             "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "bash.bashrc", "profile", "mime.types",
             "gitconfig", "inputrc", "skel"]
REDACT_HEADERS = ("x-api-key", "x-access-token", "e2b-traffic-access-token", "x-supabase-token", "x-admin-token")
PROXY_PAGES = {
    502: "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
         "</center>\r\n</body>\r\n</html>\r\n",
    503: "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n<center><h1>"
         "503 Service Temporarily Unavailable</h1></center>\r\n</body>\r\n</html>\r\n",
}
ABORT = object()   # queued to a subscriber: the sandbox is gone, cut the stream


def _json(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def _rfc3339(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


def _rfc3339nano(ns):
    """Go's time.RFC3339Nano in UTC: fractional seconds without trailing zeros."""
    s, frac = divmod(ns, 10**9)
    out = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))
    if frac:
        out += ("." + "%09d" % frac).rstrip("0")
    return out + "Z"


RFC3339_RE = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)$")


def _parse_rfc3339nano(text):
    """-> Unix nanoseconds, or None when `text` is not an RFC 3339 time."""
    m = RFC3339_RE.match(text)
    if not m:
        return None
    y, mo, d, h, mi, sec = (int(x) for x in m.groups()[:6])
    try:
        if not (1 <= d <= calendar.monthrange(y, mo)[1] and h < 24 and mi < 60 and sec < 60):
            return None
        t = calendar.timegm((y, mo, d, h, mi, sec, 0, 0, 0))
    except ValueError:  # a month out of 1..12 (IllegalMonthError is one), or year 0
        return None
    frac = int((m.group(7) or ".")[1:].ljust(9, "0"))
    tz = m.group(8)
    off = 0 if tz in ("Z", "z") else (1 if tz[0] == "+" else -1) * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    return (t - off) * 10**9 + frac


def list_cursor(started_ns, sid):
    """E2B's list cursor (infra packages/api/internal/utils/pagination.go generateCursor):
    base64url (padded) of "<startedAt RFC3339Nano>__<sandboxID>"."""
    return base64.urlsafe_b64encode(("%s__%s" % (_rfc3339nano(started_ns), sid)).encode()).decode()


def parse_list_cursor(token):
    """-> (ns, sandboxID), or None where E2B answers 400 "Invalid next token" (ParseCursor:
    strict padded base64url, exactly one "__", an RFC3339Nano time)."""
    try:
        raw = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeError):
        return None
    parts = raw.split("__")
    if len(parts) != 2:
        return None
    ns = _parse_rfc3339nano(parts[0])
    return None if ns is None else (ns, parts[1])


def _rand_id(n=20):
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(n))


def template_id(alias):
    """A stable 20-character template ID for an alias (E2B IDs look like rki5dems9wqfm4r03t7g)."""
    digest = hashlib.sha256(("template:" + alias).encode()).digest()
    alphabet = string.ascii_lowercase + string.digits
    return "".join(alphabet[b % 36] for b in digest[:20])


def frame(payload, flags=0):
    """A Connect envelope: 1 byte flags, 4 bytes big-endian length, payload."""
    return struct.pack(">BI", flags, len(payload)) + payload


def _redact_env(env):
    return {k: "[redacted]" for k in env} if isinstance(env, dict) else env


# -- processes ---------------------------------------------------------------------------------

class Spawner(threading.Thread):
    """Forks every sandboxed process from one long-lived thread: bwrap's --die-with-parent is
    PR_SET_PDEATHSIG, which fires when the *thread* that forked it exits, so a request thread
    must not be the parent."""

    def __init__(self):
        super().__init__(daemon=True, name="e2b-spawner")
        self.q = queue.Queue()
        self.start()

    def run(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            fn, box, done = item
            try:
                box["result"] = fn()
            except BaseException as e:  # handed to the caller
                box["error"] = e
            done.set()

    def popen(self, argv, **kw):
        box, done = {}, threading.Event()
        self.q.put((lambda: subprocess.Popen(argv, **kw), box, done))
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["result"]


def _children(pid):
    out = []
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


class Subscriber:
    """One stream's view of a process: a bounded queue, as envd's fan-out (a slow reader
    back-pressures the process; output with no subscriber is dropped)."""

    def __init__(self):
        self.q = queue.Queue(maxsize=64)
        self.closed = False

    def put(self, ev):
        while not self.closed:
            try:
                self.q.put(ev, timeout=0.2)
                return
            except queue.Full:
                continue

    def abort(self):
        self.closed = True
        while True:  # make room so the waiting stream wakes up at once
            try:
                self.q.get_nowait()
            except queue.Empty:
                break
        try:
            self.q.put_nowait(ABORT)
        except queue.Full:
            pass


# pid 1 of every command's namespace (run by the host's /usr/bin/python3, read-only in the sandbox):
# forks the command, reports its raw wait status on the status fd the moment it exits, then keeps
# reaping until every process it left behind (a `>(tee ...)`, a `cmd &`) is gone, so those live
# on as in a real sandbox. A missing command is exit 127 with a message, as under envd's sh wrapper.
INIT = r"""
import os, sys
fd = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    os.close(fd)
    os.execv("/bin/sh", ["sh", "-c", 'exec "$@"', "sh"] + sys.argv[2:])
for i in (0, 1, 2):
    os.close(i)
while True:
    try:
        p, st = os.wait()
    except ChildProcessError:
        break
    except InterruptedError:
        continue
    if p == pid:
        os.write(fd, b"%d\n" % st)
        os.close(fd)
"""


class Proc:
    """One Start: the command, its output fan-out, its end event."""

    def __init__(self, sandbox, popen, status_fd, config, tag, deadline, first_sub=None):
        self.sandbox = sandbox
        self.popen = popen
        self.pid = popen.pid
        self.config = config
        self.tag = tag
        self.subs = {first_sub} if first_sub else set()  # attached before any output is read
        self.lock = threading.Lock()
        self.end = None             # the end event once exited
        self.ended = threading.Event()
        self.cmd_exited = threading.Event()
        self.exited_at = None
        self.out_cancelled = False  # envd stops forwarding output after SIGTERM/SIGKILL
        self.deadline = deadline    # Connect-Timeout-Ms of Start: the process lifetime
        self.stdin = popen.stdin
        self.stdin_lock = threading.Lock()
        self.cmd_pid = None         # host pid of the command (pid 2 of the namespace)
        self.wake_r, self.wake_w = os.pipe()
        self.readers = []
        for name, pipe in (("stdout", popen.stdout), ("stderr", popen.stderr)):
            t = threading.Thread(target=self._read, args=(name, pipe), daemon=True)
            t.start()
            self.readers.append(t)
        threading.Thread(target=self._wait, args=(status_fd,), daemon=True).start()
        if deadline:
            threading.Thread(target=self._deadline, daemon=True).start()

    @property
    def running(self):
        return self.end is None

    def subscribe(self):
        s = Subscriber()
        with self.lock:
            if self.end is None:
                self.subs.add(s)
            else:
                s.q.put(("end", self.end))
        return s

    def unsubscribe(self, s):
        s.closed = True
        with self.lock:
            self.subs.discard(s)

    def _publish(self, ev):
        with self.lock:
            subs = list(self.subs)
        for s in subs:
            s.put(ev)

    def _read(self, name, pipe):
        """Raw pipe reads of up to 32 KiB, as envd. When the command exits envd closes its pipes:
        here what is already buffered is forwarded, then the read end is closed (whatever the
        command left behind gets EPIPE from then on)."""
        fd = pipe.fileno()
        after_exit = 0
        while True:
            done = self.cmd_exited.is_set()
            try:
                ready, _, _ = select.select([fd] if done else [fd, self.wake_r], [], [], 0 if done else None)
            except (OSError, ValueError):
                break
            if fd not in ready:
                if done:
                    break
                continue
            try:
                data = os.read(fd, 32 * 1024)
            except OSError:
                break
            if not data:
                break
            if not self.out_cancelled:
                self._publish(("data", {name: base64.b64encode(data).decode()}))
            if done:
                after_exit += 1
                if after_exit >= 8:
                    break
        pipe.close()

    def _wait(self, status_fd):
        raw = b""
        while True:
            try:
                chunk = os.read(status_fd, 64)
            except OSError:
                break
            if not chunk:
                break
            raw += chunk
        os.close(status_fd)
        if raw.strip():
            st = int(raw.strip())
            sig = os.WTERMSIG(st) if os.WIFSIGNALED(st) else None
            rc = os.WEXITSTATUS(st) if os.WIFEXITED(st) else 0
        else:
            # No status: bwrap failed to start, or the namespace was killed (sandbox gone).
            rc = self.popen.wait()
            sig, rc = (-rc, 0) if rc < 0 else (None, rc)
        self.cmd_exited.set()
        os.write(self.wake_w, b"x")
        for t in self.readers:
            t.join(5)
        os.close(self.wake_r)
        os.close(self.wake_w)
        if sig:
            text = "signal: " + GO_SIGNAL_TEXT.get(sig, "signal %d" % sig)
            end = {"exitCode": -1, "status": text, "error": text}
        elif rc:  # protojson: fields in proto order, zero values left out
            end = {"exitCode": rc, "exited": True, "status": "exit status %d" % rc, "error": "exit status %d" % rc}
        else:
            end = {"exited": True, "status": "exit status 0"}
        with self.lock:
            self.end = end
            self.exited_at = time.time()
            subs = list(self.subs)
            self.subs.clear()
        self.ended.set()
        # Off the running list before anyone sees the end event (List right after must not show it).
        self.sandbox.process_exited(self)
        for s in subs:
            s.put(("end", end))
        self.close_stdin()

    def _deadline(self):
        if not self.cmd_exited.wait(max(0.0, self.deadline - time.time())):
            self.signal(9)

    def _inner_pid(self):
        """Host pid of the command: bwrap (self.pid) -> init (pid 1 inside) -> the command (pid 2)."""
        if self.cmd_pid:
            return self.cmd_pid
        for _ in range(100):
            for init in _children(self.pid):
                for kid in _children(init):
                    try:
                        with open("/proc/%d/status" % kid) as f:
                            nspid = [ln.split()[1:] for ln in f if ln.startswith("NSpid:")]
                    except OSError:
                        continue
                    if nspid and nspid[0][-1] == "2":
                        self.cmd_pid = kid
                        return kid
            if self.cmd_exited.is_set():
                return None
            time.sleep(0.01)
        return None

    def signal(self, signum):
        if signum in (9, 15):
            self.out_cancelled = True
        target = self._inner_pid()
        if target and not self.cmd_exited.is_set():
            try:
                os.kill(target, signum)
            except ProcessLookupError:
                pass

    def write_stdin(self, data):
        with self.stdin_lock:
            if self.stdin is None or self.stdin.closed:
                raise ValueError("stdin not enabled or closed")
            self.stdin.write(data)
            self.stdin.flush()

    def close_stdin(self):
        with self.stdin_lock:
            if self.stdin is not None and not self.stdin.closed:
                try:
                    self.stdin.close()
                except OSError:
                    pass

    def describe(self):
        d = {"config": self.config, "pid": self.pid}
        if self.tag is not None:
            d["tag"] = self.tag
        return d


# -- sandboxes ---------------------------------------------------------------------------------

class Sandbox:
    def __init__(self, server, alias, tid, timeout, body):
        self.server = server
        self.id = _rand_id()
        self.alias = alias
        self.template_id = tid
        self.client_id = secrets.token_hex(4)
        self.secure = body.get("secure") is True
        self.token = secrets.token_hex(24) if self.secure else None
        self.metadata = dict(body.get("metadata") or {})
        self.env_vars = dict(body.get("envVars") or {})
        self.network = body.get("allow_internet_access") is not False
        self.agents = alias in server.opts["agent_templates"] and server.tools_dir() is not None
        self.cpu_count, self.memory_mb = (2, 2048) if self.agents else (2, 512)
        self.started_ns = time.time_ns()
        self.started_at = self.started_ns / 1e9
        self.end_at = self.started_at + timeout
        self.die_at = None  # fault: the real expiry when earlier than end_at
        self.dir = os.path.join(server.root, self.id)
        self.procs = {}      # pid -> Proc (running)
        self.exited = {}     # pid -> Proc (exited, kept exit_retention_s)
        self.streams = set()  # sockets of open envd streams (cut when the sandbox dies)
        self.spawned = set()  # Popen of every bwrap still running
        self.lock = threading.Lock()
        self.killed = None
        for sub, mode in (("", 0o711), ("home", 0o750), ("tmp", 0o1777), ("root", 0o700)):
            p = os.path.join(self.dir, sub)
            os.makedirs(p, exist_ok=True)
            os.chmod(p, mode)
            if sub:
                os.chown(p, HOST_UID, HOST_UID)

    def host_path(self, path):
        """Where a sandbox path lives on the host (to check a cwd exists), or None."""
        mounts = [("/home/user", os.path.join(self.dir, "home")), ("/tmp", os.path.join(self.dir, "tmp")),
                  ("/root", os.path.join(self.dir, "root"))]
        if self.agents:
            mounts.append(("/opt/aicode/tools", self.server.tools_dir()))
        for prefix, hostdir in mounts:
            if path == prefix or path.startswith(prefix + "/"):
                return hostdir + path[len(prefix):]
        if path == "/usr" or path.startswith("/usr/") or path in ("/", "/etc", "/bin", "/sbin", "/lib",
                                                                   "/proc", "/dev", "/home", "/opt"):
            return path
        return None

    def bwrap_argv(self, user, cwd):
        uid, home = USERS[user]
        srv = self.server
        argv = ["setpriv", "--reuid=%d" % HOST_UID, "--regid=%d" % HOST_UID, "--clear-groups", "--",
                "bwrap", "--unshare-user", "--uid", str(uid), "--gid", str(uid),
                "--unshare-pid", "--as-pid-1", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--hostname", "e2b", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
                "--ro-bind", "/usr", "/usr",
                "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
                "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                "--ro-bind", srv.etc_passwd, "/etc/passwd", "--ro-bind", srv.etc_group, "/etc/group"]
        for f in ETC_FILES:
            argv += ["--ro-bind-try", "/etc/" + f, "/etc/" + f]
        argv += ["--proc", "/proc", "--dev", "/dev",
                 "--bind", os.path.join(self.dir, "tmp"), "/tmp",
                 "--bind", os.path.join(self.dir, "home"), "/home/user",
                 "--bind", os.path.join(self.dir, "root"), "/root"]
        if self.agents:
            tools = srv.tools_dir()
            argv += ["--ro-bind", tools, "/opt/aicode/tools", "--tmpfs", "/usr/local/bin"]
            for name in ("claude", "codex"):
                if os.path.lexists(os.path.join(tools, "node_modules", ".bin", name)):
                    argv += ["--symlink", "/opt/aicode/tools/node_modules/.bin/" + name, "/usr/local/bin/" + name]
        if not self.network:
            argv.append("--unshare-net")
        argv += ["--chdir", cwd or home, "--"]
        return argv

    def base_env(self, user):
        uid, home = USERS[user]
        env = {"PATH": SANDBOX_PATH, "HOME": home, "USER": user, "LOGNAME": user}
        env.update(self.env_vars)
        return env

    def spawn(self, user, config, tag, stdin, deadline, sub):
        cwd = config.get("cwd") or None
        env = self.base_env(user)
        env.update(config.get("envs") or {})
        # pid 1 is INIT (above): the command is its child, so signals from outside reach it (a pid 1
        # without handlers would ignore SIGTERM), its exact wait status comes back on a pipe, and
        # what it leaves running outlives it. --as-pid-1: bwrap reaps pid 1 itself (bwrap's own
        # init would end up an orphaned zombie under a host pid 1 that does not reap).
        status_r, status_w = os.pipe()
        argv = self.bwrap_argv(user, cwd) + ["/usr/bin/python3", "-S", "-E", "-c", INIT, str(status_w),
                                             config["cmd"]] + list(config.get("args") or [])
        with self.lock:
            if self.killed:
                os.close(status_r)
                os.close(status_w)
                raise SandboxGone()
            try:
                popen = self.server.spawner.popen(
                    argv, env=env, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=[status_w])
            finally:
                os.close(status_w)
            self.track(popen)
            proc = Proc(self, popen, status_r, config, tag, deadline, sub)
            self.procs[proc.pid] = proc
        return proc

    def track(self, popen):
        """Every bwrap of this sandbox until it exits (its namespace may outlive the command)."""
        self.spawned.add(popen)

        def reap():
            popen.wait()
            with self.lock:
                self.spawned.discard(popen)
        threading.Thread(target=reap, daemon=True).start()

    def run(self, user, args, input=b"", timeout=60):
        """Runs a short helper (the files API) inside the sandbox: (rc, stdout, stderr)."""
        argv = self.bwrap_argv(user, None) + ["/bin/sh", "-c"] + args
        with self.lock:
            if self.killed:
                raise SandboxGone()
            p = self.server.spawner.popen(argv, env=self.base_env(user), stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.track(p)
        try:
            out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        return p.returncode, out, err

    def process_exited(self, proc):
        with self.lock:
            if self.procs.get(proc.pid) is proc:
                del self.procs[proc.pid]
                if not self.killed:
                    self.exited[proc.pid] = proc

    def find(self, selector, include_exited=False):
        """A process by {"pid": N} or {"tag": "t"} -> Proc | None."""
        with self.lock:
            pools = [self.procs] + ([self.exited] if include_exited else [])
            for pool in pools:
                if "pid" in selector:
                    try:
                        p = pool.get(int(selector["pid"]))
                    except (TypeError, ValueError):
                        p = None
                    if p:
                        return p
                elif "tag" in selector:
                    for p in pool.values():
                        if p.tag == selector["tag"]:
                            return p
        return None

    def kill(self, reason):
        with self.lock:
            if self.killed:
                return
            self.killed = reason
            procs = list(self.procs.values())
            spawned = list(self.spawned)
            streams = list(self.streams)
            self.exited.clear()
        # The VM is gone: open streams are cut without an end-of-stream frame.
        for sock in streams:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for p in procs:
            with p.lock:
                subs = list(p.subs)
            for s in subs:
                s.abort()
        # SIGKILL each namespace's pid 1: every process in it dies, and bwrap reaps it.
        for popen in spawned:
            inits = _children(popen.pid)
            try:
                for init in inits:
                    os.kill(init, signal.SIGKILL)
                if not inits:
                    popen.kill()
            except OSError:
                pass
        for popen in spawned:
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                popen.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def listed(self):
        d = {"templateID": self.template_id, "alias": self.alias, "sandboxID": self.id,
             "clientID": self.client_id, "startedAt": _rfc3339(self.started_at), "endAt": _rfc3339(self.end_at),
             "cpuCount": self.cpu_count, "memoryMB": self.memory_mb, "diskSizeMB": 10240,
             "metadata": self.metadata, "state": "running", "envdVersion": self.server.opts["envd_version"],
             "volumeMounts": []}
        return d

    def detail(self):
        d = self.listed()
        if self.token:
            d["envdAccessToken"] = self.token
        d["domain"] = self.server.opts["domain"]
        d["allowInternetAccess"] = self.network
        d["lifecycle"] = {"autoResume": False, "onTimeout": "kill"}
        return d

    def created(self):
        d = {"templateID": self.template_id, "sandboxID": self.id, "alias": self.alias,
             "clientID": self.client_id, "envdVersion": self.server.opts["envd_version"],
             "trafficAccessToken": None, "domain": self.server.opts["domain"]}
        if self.token:
            d["envdAccessToken"] = self.token
        return d


class SandboxGone(Exception):
    pass


class ConnectError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


# -- HTTP --------------------------------------------------------------------------------------

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "e2b-double/1"

    def log_message(self, fmt, *args):
        pass

    # plumbing

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                line = self.rfile.readline()
                if not line:
                    break
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                out += self.rfile.read(size)
                self.rfile.readline()
            return bytes(out)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _log(self, status):
        e = self.entry
        if e is None or "status" in e:
            return
        e["status"] = status
        self.server.record(e)

    def _send(self, status, body=b"", ctype="application/json", headers=None):
        self._log(status)
        self.send_response(status)
        if body or status not in (204, 304):
            self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _api_error(self, status, message, headers=None, error_code=None):
        body = {"code": status, "message": message}
        if error_code:
            body["error_code"] = error_code
        self._send(status, _json(body), headers=headers)

    def _connect_error(self, code, message):
        self._send(CONNECT_HTTP.get(code, 500), _json({"code": code, "message": message}))

    def _drop(self):
        """Closes the TCP connection mid-response (no end-of-stream, no last chunk)."""
        if self.entry is not None:
            self.entry["dropped"] = True
            self._log(200 if getattr(self, "stream_started", False) else 0)
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _dispatch(self):
        self.entry = None
        url = urllib.parse.urlsplit(self.path)
        self.url_path = url.path
        self.query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        self.body = self._read_body()
        if self.url_path == "/_control" or self.url_path.startswith("/_fake/"):
            return self._control()
        sid, port = self.headers.get("E2b-Sandbox-Id"), self.headers.get("E2b-Sandbox-Port")
        m = re.match(r"^(\d+)-([A-Za-z0-9-]+)\.", self.headers.get("Host", ""))
        if not sid and m:
            port, sid = m.group(1), m.group(2)
        plane = "envd" if sid else "api"
        self.entry = self.server.new_entry(self, plane, sid)
        try:
            if plane == "envd":
                self._envd(sid, port or ENVD_PORT)
            else:
                self._api()
        except BrokenPipeError:
            self.close_connection = True
        except ConnectionResetError:
            self.close_connection = True

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = do_HEAD = lambda self: self._dispatch()

    # -- control endpoints (tests) ----------------------------------------------------------------

    def _control(self):
        srv = self.server
        if self.command == "GET" and self.url_path == "/_fake/requests":
            return self._send(200, _json(srv.requests))
        if self.command == "POST" and self.url_path == "/_fake/reset":
            srv.requests.clear()
            return self._send(200, b"{}")
        if self.command == "POST":
            try:
                cfg = json.loads(self.body or b"{}")
            except ValueError:
                return self._send(400, b'{"message":"bad json"}')
            for action in ("expire", "kill"):
                if action in cfg:
                    arg = cfg.pop(action)
                    sid, in_s = (arg.get("sandbox"), float(arg.get("in_s", 0))) if isinstance(arg, dict) \
                        else (arg, 0.0)
                    sb = srv.sandboxes.get(sid)
                    if not sb:
                        return self._send(404, _json({"message": "no sandbox %s" % sid}))
                    if action == "kill" or in_s <= 0:
                        srv.kill_sandbox(sid, "expired" if action == "expire" else "killed")
                    else:
                        sb.die_at = time.time() + in_s
            if cfg.pop("reset_log", False):
                srv.requests.clear()
            unknown = [k for k in cfg if k not in DEFAULTS]
            if unknown:
                return self._send(400, _json({"message": "unknown options: %s" % ", ".join(unknown)}))
            srv.opts.update(cfg)
        return self._send(200, _json(srv.state()))

    # -- control plane ----------------------------------------------------------------------------

    def _api(self):
        srv = self.server
        path, method = self.url_path.rstrip("/") or "/", self.command
        if path == "/health":
            return self._send(200, b"")
        keys = srv.opts["api_key"]
        keys = [keys] if isinstance(keys, str) else list(keys or [])
        given = self.headers.get("X-API-Key", "")
        if not given or not any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
            return self._api_error(401, "Invalid API key")
        body = None
        if self.body:
            try:
                body = json.loads(self.body)
            except ValueError:
                return self._api_error(400, "Error when parsing request: invalid JSON body")
        if path == "/sandboxes" and method == "POST":
            return self._create(body)
        if path in ("/sandboxes", "/v2/sandboxes") and method == "GET":
            return self._list(v2=path.startswith("/v2"))
        m = re.match(r"^/sandboxes/([^/]+)(/[a-z]+)?$", path)
        if not m:
            return self._api_error(404, "Not Found")
        sid, action = m.group(1), m.group(2) or ""
        sb = srv.sandboxes.get(sid)
        if not sb or sb.killed:
            return self._api_error(404, "sandbox \"%s\" doesn't exist or you don't have access to it" % sid)
        if action == "" and method == "GET":
            return self._send(200, _json(sb.detail()))
        if action == "" and method == "DELETE":
            srv.kill_sandbox(sid, "killed")
            return self._send(204)
        if method != "POST":
            return self._api_error(405, "Method Not Allowed")
        if action == "/timeout":
            t = (body or {}).get("timeout")
            err = srv.check_timeout(t)
            if err:
                return self._api_error(400, err)
            sb.end_at = time.time() + t
            return self._send(204)
        if action == "/refreshes":
            d = (body or {}).get("duration", 15)
            if not isinstance(d, int) or isinstance(d, bool) or d < 0 or d > 3600:
                return self._api_error(400, "duration must be an integer between 0 and 3600")
            sb.end_at = max(sb.end_at, time.time() + d)
            return self._send(204)
        if action == "/connect":
            t = (body or {}).get("timeout")
            err = srv.check_timeout(t)
            if err:
                return self._api_error(400, err)
            sb.end_at = max(sb.end_at, time.time() + t)  # connect only ever extends
            return self._send(200, _json(sb.created()))
        if action in ("/pause", "/resume", "/fork", "/snapshots"):
            return self._api_error(501, "%s is not implemented by the E2B test double" % action[1:])
        return self._api_error(404, "Not Found")

    def _create(self, body):
        srv, o = self.server, self.server.opts
        if o["create_delay_ms"]:
            time.sleep(o["create_delay_ms"] / 1000.0)
        if srv.take("create_429_next"):
            ra = o["retry_after"]
            return self._api_error(429, "Rate limit exceeded", headers={
                "Retry-After": ra, "RateLimit-Limit": 5, "RateLimit-Remaining": 0, "RateLimit-Reset": ra})
        if srv.take("create_5xx_next"):
            st = int(o["create_5xx_status"])
            msg, code = {
                502: ("Bad Gateway", None),
                503: ("No capacity is available to create the sandbox right now", "sandbox_capacity_unavailable"),
                504: ("Timed out while placing the sandbox", "sandbox_placement_timeout"),
            }.get(st, ("Failed to create sandbox", "sandbox_create_failed"))
            return self._api_error(st, msg, error_code=code)
        if not isinstance(body, dict):
            return self._api_error(400, "Error when parsing request: request body has an error: value is required")
        tpl = body.get("templateID")
        if not isinstance(tpl, str) or not tpl:
            return self._api_error(400, "Error when parsing request: templateID is required")
        alias = srv.resolve_template(tpl)
        if alias is None:
            return self._api_error(404, "template '%s' not found" % tpl)
        timeout = body.get("timeout", 15)
        err = srv.check_timeout(timeout)
        if err:
            return self._api_error(400, err)
        for field in ("metadata", "envVars"):
            v = body.get(field)
            if v is not None and (not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values())):
                return self._api_error(400, "Error when parsing request: %s must be an object of strings" % field)
        with srv.lock:
            running = sum(1 for s in srv.sandboxes.values() if not s.killed)
            if running >= o["max_sandboxes"]:
                return self._api_error(
                    429, "you have reached the maximum number of concurrent E2B sandboxes (%d). If you need "
                    "more, please contact us at 'https://e2b.dev/docs/getting-help'" % o["max_sandboxes"])
            sb = Sandbox(srv, alias, template_id(alias), timeout, body)
            if srv.take("expire_next"):
                sb.die_at = time.time() + float(o["expire_after_s"])
            srv.sandboxes[sb.id] = sb
        self.entry["sandbox_id"] = sb.id
        return self._send(201, _json(sb.created()))

    def _list(self, v2):
        srv = self.server
        if v2 and srv.take("list_5xx_next"):
            return self._api_error(500, "Error when getting sandboxes")
        want = {}
        for raw in self.query.get("metadata", []):
            for pair in raw.split("&"):
                if not pair:
                    continue
                if "=" not in pair:
                    return self._api_error(400, "Error when parsing metadata: invalid key value pair '%s'" % pair)
                k, v = pair.split("=", 1)
                want[urllib.parse.unquote(k)] = urllib.parse.unquote(v)
        states = set()
        for raw in self.query.get("state", []):
            states |= {s for s in raw.split(",") if s}
        if states - {"running", "paused"}:
            return self._api_error(400, "invalid state: %s" % ",".join(sorted(states - {"running", "paused"})))
        with srv.lock:
            items = [s for s in srv.sandboxes.values() if not s.killed
                     and all(s.metadata.get(k) == v for k, v in want.items())]
        running = not states or "running" in states
        if not running:
            items = []
        # E2B sorts newest first (SortPaginatedSandboxesDesc: startedAt descending, then sandboxID
        # ascending); the v2 `order` option ('asc' / 'desc', default 'desc') flips the time order.
        asc = v2 and (self.query.get("order") or ["desc"])[0] == "asc"
        items.sort(key=lambda s: ((s.started_ns if asc else -s.started_ns), s.id))
        if not v2:
            return self._send(200, _json([s.listed() for s in items]))
        try:
            limit = int((self.query.get("limit") or ["100"])[0])
        except ValueError:
            limit = -1
        if limit < 1 or limit > 100:
            return self._api_error(400, "limit must be between 1 and 100")
        headers = {"X-Total-Running": len(items)} if running else {}
        token = (self.query.get("nextToken") or [""])[0]
        if token:
            cursor = parse_list_cursor(token)
            if cursor is None:
                return self._api_error(400, "Invalid next token")
            # A position, not an entry: the entries after the cursor in this order (the cursor's own
            # sandbox need not exist any more).
            ns, cid = cursor
            key = ((ns if asc else -ns), cid)
            items = [s for s in items if ((s.started_ns if asc else -s.started_ns), s.id) > key]
        page = items[:limit]
        if len(items) > limit:
            last = page[-1]
            headers["X-Next-Token"] = list_cursor(last.started_ns, last.id)
            if srv.take("list_bad_token_next"):
                headers["X-Next-Token"] = "not-a-cursor!"
        elif srv.opts["list_endless"]:
            # A misbehaving API: a next token on the last page too, one that starts over (before
            # every sandbox in this order), and a different one each time.
            with srv.lock:
                srv.endless_seq += 1
                n = srv.endless_seq
            start_ns = (n if asc else calendar.timegm((2999, 1, 1, 0, 0, 0)) * 10**9 + n)
            headers["X-Next-Token"] = list_cursor(start_ns, "")
        return self._send(200, _json([s.listed() for s in page]), headers=headers)

    # -- envd -------------------------------------------------------------------------------------

    def _envd(self, sid, port):
        srv = self.server
        if srv.opts["envd_down"] or srv.take("envd_unavailable_next"):
            st = int(srv.opts["envd_unavailable_status"])
            page = PROXY_PAGES.get(st, PROXY_PAGES[502])
            return self._send(st, page.encode(), ctype="text/html")
        sb = srv.sandboxes.get(sid)
        if not sb or sb.killed:
            return self._send(int(srv.opts["sandbox_not_found_status"]),
                              _json({"sandboxId": sid, "message": "The sandbox was not found"}))
        if port != ENVD_PORT:
            return self._send(502, _json({"sandboxId": sid, "message": "The sandbox is running but port is not open",
                                          "port": port}))
        path, method = self.url_path, self.command
        self.sandbox = sb
        if path == "/health" and method == "GET":
            return self._send(204)
        token_ok = sb.token is None or hmac.compare_digest(
            self.headers.get("X-Access-Token", "").encode(), sb.token.encode())
        if path == "/files":
            return self._files(sb, method)
        if not token_ok:
            return self._send(401, _json({"code": 401, "message": "unauthorized access, please provide a valid "
                                          "access token or method signing if supported"}))
        if path == "/envs" and method == "GET":
            return self._send(200, _json(sb.env_vars))
        m = re.match(r"^/([a-z]+\.[A-Za-z]+)/([A-Za-z]+)$", path)
        if not m or method != "POST":
            return self._send(404, b"404 page not found\n", ctype="text/plain; charset=utf-8")
        rpc = "%s/%s" % (m.group(1), m.group(2))
        self.entry["rpc"] = rpc
        if rpc in ("process.Process/Start", "process.Process/Connect"):
            return self._stream_rpc(sb, rpc)
        return self._unary_rpc(sb, rpc)

    def _user(self):
        auth = self.headers.get("Authorization", "")
        if not auth:
            return "user"
        if auth.startswith("Basic "):
            try:
                name = base64.b64decode(auth[6:]).decode().split(":", 1)[0]
            except (ValueError, UnicodeDecodeError):
                name = ""
            if name in USERS:
                return name
            raise ConnectError("unauthenticated", "invalid username: '%s'" % name)
        raise ConnectError("unauthenticated", "invalid authorization header")

    def _unary_rpc(self, sb, rpc):
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype not in ("application/json", ""):
            return self._send(415, b"", headers={"Accept-Post": "application/json, application/proto"})
        try:
            msg = json.loads(self.body or b"{}")
            if not isinstance(msg, dict):
                raise ValueError
        except ValueError:
            return self._connect_error("invalid_argument", "unmarshal into %s: invalid JSON" % rpc)
        try:
            self._user()
            out = self._unary(sb, rpc, msg)
        except ConnectError as e:
            return self._connect_error(e.code, e.message)
        self._send(200, _json(out))

    def _unary(self, sb, rpc, msg):
        if rpc == "process.Process/List":
            with sb.lock:
                procs = list(sb.procs.values())
            return {"processes": [p.describe() for p in procs]} if procs else {}
        sel = msg.get("process") or {}
        if rpc in ("process.Process/SendSignal", "process.Process/SendInput", "process.Process/CloseStdin"):
            p = sb.find(sel)
            if p is None:
                if "pid" in sel:
                    raise ConnectError("not_found", "process with pid %s not found" % sel.get("pid"))
                if "tag" in sel:
                    raise ConnectError("not_found", "process with tag %s not found" % sel.get("tag"))
                raise ConnectError("invalid_argument", "invalid input type: a process selector (pid or tag) is required")
            if rpc == "process.Process/SendSignal":
                signum = SIGNALS.get(msg.get("signal"))
                if signum is None:
                    raise ConnectError("invalid_argument", "invalid signal: %s" % msg.get("signal"))
                p.signal(signum)
                return {}
            if rpc == "process.Process/CloseStdin":
                p.close_stdin()
                return {}
            data = (msg.get("input") or {})
            if "pty" in data:
                raise ConnectError("failed_precondition", "tty not assigned to process")
            try:
                p.write_stdin(base64.b64decode(data.get("stdin") or ""))
            except ValueError as e:
                raise ConnectError("failed_precondition", str(e))
            except OSError as e:
                raise ConnectError("internal", "error writing to stdin of process '%d': %s" % (p.pid, e))
            return {}
        raise ConnectError("unimplemented", "%s is not implemented" % rpc)

    def _stream_rpc(self, sb, rpc):
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/connect+json":
            return self._send(415, b"", headers={"Accept-Post": "application/connect+json, application/connect+proto"})
        arrived = time.time()
        self.stream_started = False
        with sb.lock:
            if sb.killed:
                return self._drop()
            sb.streams.add(self.connection)
        try:
            self._stream(sb, rpc, arrived)
        finally:
            with sb.lock:
                sb.streams.discard(self.connection)

    def _begin_stream(self):
        # Headers go out with the first frame, so the log line has the parsed request.
        self._log(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/connect+json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.stream_started = True

    def _chunk(self, data):
        if not self.stream_started:
            self._begin_stream()
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))

    def _event(self, ev):
        self._chunk(frame(_json({"event": ev})))

    def _end_stream(self, error=None):
        self._chunk(frame(_json({"error": error} if error else {}), flags=0x02))
        self.wfile.write(b"0\r\n\r\n")

    def _stream(self, sb, rpc, arrived):
        srv, o = self.server, self.server.opts
        # Request: exactly one enveloped message.
        body = self.body
        if len(body) < 5:
            return self._end_stream({"code": "invalid_argument", "message": "protocol error: incomplete envelope"})
        flags, n = struct.unpack(">BI", body[:5])
        if flags & 0x01:
            return self._end_stream({"code": "internal", "message": "protocol error: sent compressed message "
                                     "without compression support"})
        if len(body) - 5 != n:
            return self._end_stream({"code": "invalid_argument", "message": "protocol error: promised %d bytes in "
                                     "enveloped message, got %d bytes" % (n, len(body) - 5)})
        try:
            msg = json.loads(body[5:] or b"{}")
            if not isinstance(msg, dict):
                raise ValueError
        except ValueError:
            return self._end_stream({"code": "invalid_argument", "message": "unmarshal into %s: invalid JSON" % rpc})
        th = self.headers.get("Connect-Timeout-Ms")
        deadline = None
        if th:
            if not th.isdigit() or len(th) > 10:
                return self._end_stream({"code": "invalid_argument", "message": "protocol error: invalid "
                                         "Connect-Timeout-Ms %r" % th})
            if int(th) > 0:
                deadline = arrived + int(th) / 1000.0
        try:
            keepalive = float(self.headers.get("Keepalive-Ping-Interval") or o["keepalive_default_s"])
            if keepalive <= 0:
                raise ValueError
        except ValueError:
            keepalive = float(o["keepalive_default_s"])
        try:
            user = self._user()
        except ConnectError as e:
            return self._end_stream({"code": e.code, "message": e.message})
        fault = {}
        if rpc == "process.Process/Start":
            cfg = msg.get("process") if isinstance(msg.get("process"), dict) else {}
            self.entry["body"] = {"process": dict(cfg, envs=_redact_env(cfg.get("envs") or {})),
                                  "tag": msg.get("tag"), "stdin": msg.get("stdin")}
            if msg.get("pty"):
                return self._end_stream({"code": "unimplemented", "message": "pty is not supported by the E2B "
                                         "test double"})
            if not isinstance(cfg.get("cmd"), str) or not cfg["cmd"]:
                return self._end_stream({"code": "invalid_argument", "message": "process.cmd is required"})
            if not all(isinstance(a, str) for a in cfg.get("args") or []) or \
                    not all(isinstance(v, str) for v in (cfg.get("envs") or {}).values()):
                return self._end_stream({"code": "invalid_argument", "message": "args and envs must be strings"})
            uid, home = USERS[user]
            cwd = cfg.get("cwd") or home
            if cwd.startswith("~"):
                cwd = home + cwd[1:]
            if not cwd.startswith("/"):
                cwd = posixpath.join(home, cwd)
            cwd = posixpath.normpath(cwd)
            hp = sb.host_path(cwd)
            if hp is None or not os.path.isdir(hp):
                return self._end_stream({"code": "invalid_argument", "message": "cwd '%s' does not exist" % cwd})
            config = {"cmd": cfg["cmd"]}
            if cfg.get("args"):
                config["args"] = list(cfg["args"])
            if cfg.get("envs"):
                config["envs"] = dict(cfg["envs"])
            if cfg.get("cwd"):
                config["cwd"] = cfg["cwd"]
            if srv.take("drop_stream_next"):
                fault["drop_after"] = max(0, int(o["drop_after_events"]))
            if srv.take("stream_error_next"):
                fault["error_after"] = max(0, int(o["stream_error_after_events"]))
            stdin = msg.get("stdin") is not False  # envd: stdin is a pipe unless explicitly false
            sub = Subscriber()
            try:
                proc = sb.spawn(user, dict(config, cwd=cwd), msg.get("tag"), stdin, deadline, sub)
            except SandboxGone:
                return self._drop()
            except OSError as e:
                return self._end_stream({"code": "invalid_argument", "message": "error starting process '%s': %s"
                                         % (cfg["cmd"], e)})
            proc.config = config
            self.entry["pid"] = proc.pid
            if o["start_delay_ms"]:
                time.sleep(o["start_delay_ms"] / 1000.0)
        else:
            sel = msg.get("process") if isinstance(msg.get("process"), dict) else {}
            self.entry["body"] = {"process": sel}
            proc = sb.find(sel, include_exited=True)
            if proc is None:
                if "pid" in sel:
                    err = "process with pid %s not found" % sel.get("pid")
                elif "tag" in sel:
                    err = "process with tag %s not found" % sel.get("tag")
                else:
                    return self._end_stream({"code": "unimplemented", "message": "invalid input type"})
                return self._end_stream({"code": "not_found", "message": err})
            sub = proc.subscribe()
        try:
            self._pump(proc, sub, deadline, keepalive, fault)
        finally:
            proc.unsubscribe(sub)

    def _pump(self, proc, sub, deadline, keepalive, fault):
        """Writes the event stream: start, data/keepalive..., end, EndStream."""
        self._event({"start": {"pid": proc.pid}})
        next_ping = time.time() + keepalive
        sent = 0

        def check_faults():
            if "drop_after" in fault and sent >= fault["drop_after"]:
                self._drop()
                return True
            if "error_after" in fault and sent >= fault["error_after"]:
                self._end_stream({"code": "unavailable", "message": "injected stream error (the process keeps "
                                  "running)"})
                return True
            return False

        if check_faults():
            return
        while True:
            now = time.time()
            wait = next_ping - now
            if deadline is not None:
                wait = min(wait, deadline - now)
            try:
                item = sub.q.get(timeout=max(0.0, wait))
            except queue.Empty:
                now = time.time()
                if deadline is not None and now >= deadline:
                    return self._end_stream({"code": "deadline_exceeded", "message": "context deadline exceeded"})
                self._event({"keepalive": {}})
                next_ping = now + keepalive
                continue
            if item is ABORT:
                return self._drop()
            kind, payload = item
            if kind == "data":
                self._event({"data": payload})
                sent += 1
                next_ping = time.time() + keepalive
                if check_faults():
                    return
            else:
                self._event({"end": payload})
                return self._end_stream()

    # -- files ------------------------------------------------------------------------------------

    def _files_error(self, status, message):
        self._send(status, _json({"code": status, "message": message}))

    def _signature_ok(self, sb, path, op, username):
        sig = (self.query.get("signature") or [None])[0]
        if sig is None:
            return "missing signature query parameter"
        exp = (self.query.get("signature_expiration") or [None])[0]
        parts = [path, op, username or "", sb.token] + ([exp] if exp is not None else [])
        want = "v1_" + base64.b64encode(hashlib.sha256(":".join(parts).encode()).digest()).decode().rstrip("=")
        if not hmac.compare_digest(want.encode(), sig.encode()):
            return "invalid signature"
        if exp is not None and (not exp.lstrip("-").isdigit() or int(exp) < time.time()):
            return "signature is already expired"
        return None

    def _files(self, sb, method):
        if method not in ("GET", "POST"):
            return self._send(405, b"", ctype="text/plain")
        path = (self.query.get("path") or [None])[0]
        username = (self.query.get("username") or [None])[0]
        self.entry["file"] = path
        if sb.token is not None:
            given = self.headers.get("X-Access-Token", "")
            if given:
                if not hmac.compare_digest(given.encode(), sb.token.encode()):
                    return self._files_error(401, "access token present in header but does not match")
            else:
                why = self._signature_ok(sb, path or "", "read" if method == "GET" else "write", username)
                if why:
                    return self._files_error(401, why)
        user = username or "user"
        if user not in USERS:
            return self._files_error(401, "error looking up user '%s': user: unknown user %s" % (user, user))
        home = USERS[user][1]

        def resolve(p):
            p = p or ""
            if p.startswith("~"):
                p = home + p[1:]
            if not p.startswith("/"):
                p = posixpath.join(home, p)
            return posixpath.normpath(p)

        if method == "GET":
            return self._download(sb, user, resolve(path))
        body = self.body
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError):
                return self._files_error(400, "error decompressing request body: invalid gzip data")
        ctype = self.headers.get("Content-Type", "")
        media = ctype.split(";")[0].strip().lower()
        uploads = []
        if media == "application/octet-stream":
            if path is None:
                return self._files_error(400, "path query parameter is required for raw body upload")
            uploads.append((resolve(path), body))
        elif media.startswith("multipart/"):
            m = re.search(r'boundary="?([^";]+)"?', ctype)
            if not m:
                return self._files_error(500, "error parsing multipart form: no multipart boundary param in "
                                         "Content-Type")
            for name, filename, data in parse_multipart(body, m.group(1).encode()):
                if name != "file":
                    continue
                dest = resolve(path if path is not None else filename)
                if any(d == dest for d, _ in uploads):
                    return self._files_error(400, "you cannot upload multiple files to the same path '%s' in one "
                                             "upload request, only the first specified file was uploaded" % dest)
                uploads.append((dest, data))
        else:
            return self._files_error(400, "unsupported content type: %s, expected multipart/form-data or "
                                     "application/octet-stream" % ctype)
        self.entry["body_size"] = len(body)
        out = []
        for dest, data in uploads:
            rc, _, err = sb.run(user, [
                'p=$1; d=$(dirname -- "$p"); mkdir -p -- "$d" || exit 43; [ -d "$p" ] && exit 40; '
                'cat > "$p" || exit 45', "sh", dest], input=data)
            if rc == 40:
                return self._files_error(400, "path is a directory: %s" % dest)
            if rc != 0:
                msg = err.decode(errors="replace").strip().splitlines()
                msg = msg[-1] if msg else "exit status %d" % rc
                if "No space left" in msg:
                    return self._files_error(507, "not enough disk space available")
                if rc == 43:
                    return self._files_error(500, "error ensuring directories: %s" % msg)
                return self._files_error(500, "error opening file: %s" % msg)
            out.append({"path": dest, "name": posixpath.basename(dest), "type": "file"})
        self._send(200, _json(out))

    def _download(self, sb, user, path):
        rc, data, err = sb.run(user, [
            'p=$1; [ -e "$p" ] || exit 44; [ -d "$p" ] && exit 40; exec cat -- "$p"', "sh", path])
        if rc == 44:
            return self._files_error(404, "path '%s' does not exist" % path)
        if rc == 40:
            return self._files_error(400, "path '%s' is a directory" % path)
        if rc != 0:
            msg = err.decode(errors="replace").strip().splitlines()
            return self._files_error(500, "error opening file '%s': %s" % (path, msg[-1] if msg else rc))
        headers = {"Vary": "Accept-Encoding", "Accept-Ranges": "bytes"}
        rng = self.headers.get("Range")
        if rng:
            m = re.match(r"^bytes=(\d*)-(\d*)$", rng.strip())
            size = len(data)
            start = end = None
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                else:
                    start, end = max(0, size - int(m.group(2))), size - 1
            if start is None or start >= size or start > end:
                headers["Content-Range"] = "bytes */%d" % size
                return self._send(416, b"invalid range: failed to overlap\n", ctype="text/plain; charset=utf-8",
                                  headers=headers)
            headers["Content-Range"] = "bytes %d-%d/%d" % (start, end, size)
            return self._send(206, data[start:end + 1], ctype="application/octet-stream", headers=headers)
        if "gzip" in self.headers.get("Accept-Encoding", "").lower():
            headers["Content-Encoding"] = "gzip"
            return self._send(200, gzip.compress(data), ctype="application/octet-stream", headers=headers)
        self._send(200, data, ctype="application/octet-stream", headers=headers)


def parse_multipart(body, boundary):
    """[(form name, filename, bytes)] of a multipart/form-data body (binary-safe)."""
    out = []
    delim = b"--" + boundary
    for part in body.split(delim)[1:]:
        if part.startswith(b"--"):
            break
        if part.startswith(b"\r\n"):
            part = part[2:]
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        if data.endswith(b"\r\n"):
            data = data[:-2]
        disp = ""
        for line in head.decode("utf-8", errors="replace").split("\r\n"):
            if line.lower().startswith("content-disposition:"):
                disp = line
        name = re.search(r'\bname="([^"]*)"', disp)
        filename = re.search(r'\bfilename="([^"]*)"', disp)
        out.append((name.group(1) if name else None, filename.group(1) if filename else None, data))
    return out


class E2BServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, addr, opts):
        self.opts = dict(DEFAULTS)
        self.opts.update({k: v for k, v in opts.items() if v is not None or k in ("domain",)})
        unknown = [k for k in opts if k not in DEFAULTS]
        if unknown:
            raise TypeError("unknown e2b double options: %s" % ", ".join(unknown))
        self.own_root = self.opts["root"] is None
        self.root = self.opts["root"] or tempfile.mkdtemp(prefix="e2b-double-")
        os.makedirs(self.root, exist_ok=True)
        os.chmod(self.root, 0o711)
        etc = os.path.join(self.root, ".etc")
        os.makedirs(etc, exist_ok=True)
        self.etc_passwd, self.etc_group = os.path.join(etc, "passwd"), os.path.join(etc, "group")
        with open(self.etc_passwd, "w") as f:
            f.write("root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\n"
                    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
        with open(self.etc_group, "w") as f:
            f.write("root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n")
        os.chmod(etc, 0o755)
        for p in (self.etc_passwd, self.etc_group):
            os.chmod(p, 0o644)
        self.sandboxes = {}
        self.killed = {}      # sandboxID -> reason ("killed" | "expired")
        self.requests = []
        self.lock = threading.RLock()
        self.log_lock = threading.Lock()
        self.seq = 0
        self.spawner = Spawner()
        self.closing = False
        self.endless_seq = 0  # fault list_endless: makes each start-over token different
        super().__init__(addr, Handler)
        self.port = self.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        threading.Thread(target=self._reaper, daemon=True, name="e2b-reaper").start()

    def tools_dir(self):
        d = self.opts["tools_dir"]
        return d if d and os.path.isdir(os.path.join(d, "node_modules")) else None

    def take(self, key):
        """Consumes one unit of an N-next fault."""
        with self.lock:
            if self.opts.get(key, 0) > 0:
                self.opts[key] -= 1
                return True
        return False

    def resolve_template(self, ref):
        for alias in self.opts["templates"]:
            if ref in (alias, template_id(alias)):
                return alias
        return None

    def check_timeout(self, t):
        if not isinstance(t, int) or isinstance(t, bool):
            return "Timeout must be an integer number of seconds"
        if t <= 0:
            return "Timeout must be greater than 0"
        if t > self.opts["max_length_hours"] * 3600:
            return "Timeout cannot be greater than %d hours" % self.opts["max_length_hours"]
        return None

    def kill_sandbox(self, sid, reason):
        sb = self.sandboxes.get(sid)
        if not sb:
            return
        sb.kill(reason)
        with self.lock:
            if self.sandboxes.get(sid) is sb:
                del self.sandboxes[sid]
            self.killed[sid] = reason

    def _reaper(self):
        while not self.closing:
            now = time.time()
            for sid, sb in list(self.sandboxes.items()):
                if sb.killed:
                    continue
                if now >= sb.end_at or (sb.die_at is not None and now >= sb.die_at):
                    self.kill_sandbox(sid, "expired")
                    continue
                ttl = self.opts["exit_retention_s"]
                with sb.lock:
                    for pid, p in list(sb.exited.items()):
                        if p.exited_at is not None and now - p.exited_at > ttl:
                            del sb.exited[pid]
            time.sleep(0.05)

    def new_entry(self, h, plane, sid):
        with self.log_lock:
            self.seq += 1
            seq = self.seq
        headers = {}
        for k, v in h.headers.items():
            k = k.lower()
            if k in REDACT_HEADERS:
                v = "[redacted]"
            elif k == "authorization":
                v = v.split(" ", 1)[0] + " [redacted]"
            headers[k] = v
        query = {k: (["[redacted]"] if k == "signature" else v) for k, v in h.query.items()}
        e = {"seq": seq, "ts": round(time.time(), 3), "method": h.command, "path": h.url_path, "query": query,
             "plane": plane, "sandbox_id": sid, "headers": headers}
        if plane == "api" and h.body:
            try:
                body = json.loads(h.body)
                if isinstance(body, dict) and "envVars" in body:
                    body = dict(body, envVars=_redact_env(body["envVars"]))
                e["body"] = body
            except ValueError:
                e["body_size"] = len(h.body)
        return e

    def record(self, e):
        with self.log_lock:
            self.requests.append(e)
            if self.opts["log"]:
                with open(self.opts["log"], "a") as f:
                    f.write(json.dumps(e) + "\n")

    def state(self):
        o = dict(self.opts)
        o["api_key"] = "[redacted]"
        sbs = []
        for sb in list(self.sandboxes.values()):
            with sb.lock:
                procs = [{"pid": p.pid, "tag": p.tag, "running": True} for p in sb.procs.values()] + \
                        [{"pid": p.pid, "tag": p.tag, "running": False, "end": p.end} for p in sb.exited.values()]
            sbs.append({"sandboxID": sb.id, "alias": sb.alias, "metadata": sb.metadata, "state": "running",
                        "endAt": _rfc3339(sb.end_at), "dir": sb.dir, "processes": procs})
        return {"opts": o, "sandboxes": sbs, "killed": dict(self.killed)}

    def live_processes(self):
        """Host pids of every sandbox bwrap still running, commands and what they left behind
        (for leak checks)."""
        out = []
        for sb in list(self.sandboxes.values()):
            with sb.lock:
                out += [p.pid for p in sb.spawned]
        return out

    def close(self):
        self.closing = True
        for sid in list(self.sandboxes):
            self.kill_sandbox(sid, "killed")
        self.shutdown()
        self.server_close()
        if self.own_root:
            shutil.rmtree(self.root, ignore_errors=True)


def start(port=0, host="127.0.0.1", **opts):
    """Starts the double in a background thread -> (server, thread, port)."""
    server = E2BServer((host, port), opts)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="e2b-double")
    thread.start()
    return server, thread, server.port


def main(argv=None):
    ap = argparse.ArgumentParser(description="local E2B double (control plane + envd)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--api-key", action="append", help="accepted X-API-Key (repeatable)")
    ap.add_argument("--log")
    ap.add_argument("--root")
    ap.add_argument("--template", action="append", help="known template alias (repeatable; replaces the default)")
    ap.add_argument("--agent-template", action="append", help="template with the agent CLIs (repeatable)")
    ap.add_argument("--tools-dir")
    ap.add_argument("--domain")
    for key, typ in (("envd_version", str), ("max_sandboxes", int), ("max_length_hours", int),
                     ("keepalive_default_s", float), ("exit_retention_s", float), ("sandbox_not_found_status", int),
                     ("create_delay_ms", int), ("create_429_next", int), ("retry_after", int),
                     ("create_5xx_next", int), ("create_5xx_status", int), ("drop_stream_next", int),
                     ("drop_after_events", int), ("stream_error_next", int), ("stream_error_after_events", int),
                     ("start_delay_ms", int), ("expire_next", int), ("expire_after_s", float),
                     ("envd_unavailable_next", int), ("envd_unavailable_status", int),
                     ("list_5xx_next", int), ("list_bad_token_next", int)):
        ap.add_argument("--" + key.replace("_", "-"), type=typ)
    ap.add_argument("--envd-down", action="store_true", default=None)
    ap.add_argument("--list-endless", action="store_true", default=None)
    a = ap.parse_args(argv)
    opts = {k: v for k, v in vars(a).items() if v is not None and k not in ("port", "host", "api_key", "template",
                                                                            "agent_template")}
    if a.api_key:
        opts["api_key"] = a.api_key if len(a.api_key) > 1 else a.api_key[0]
    if a.template:
        opts["templates"] = a.template
    if a.agent_template:
        opts["agent_templates"] = a.agent_template
        opts["templates"] = list(dict.fromkeys((opts.get("templates") or DEFAULTS["templates"]) + a.agent_template))
    server, thread, port = start(port=a.port, host=a.host, **opts)
    print("e2b listening on http://%s:%d (api and envd; templates %s; root %s)"
          % (a.host, port, ", ".join(server.opts["templates"]), server.root), flush=True)
    done = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: done.set())
    done.wait()
    server.close()


if __name__ == "__main__":
    main()
