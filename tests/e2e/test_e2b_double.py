"""The E2B double (tests/fakes/e2b.py) over raw HTTP: control plane, envd's Connect streams
(decoded with a small frame reader written here), the files API, header routing, auth and every
fault knob. One double serves the module; each test kills what it created and the module checks
that no sandbox, process or directory is left behind."""
import base64
import hashlib
import http.client
import json
import os
import struct
import sys
import time
import unittest
import urllib.parse

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "fakes"))

import e2b  # noqa: E402  (tests/fakes/e2b.py)

KEY = "e2b_0123456789abcdef0123456789abcdef"
FAULTS = {k: e2b.DEFAULTS[k] for k in (
    "create_delay_ms", "create_429_next", "retry_after", "create_5xx_next", "create_5xx_status", "drop_stream_next",
    "drop_after_events", "stream_error_next", "stream_error_after_events", "start_delay_ms", "expire_next",
    "expire_after_s", "envd_unavailable_next", "envd_unavailable_status", "envd_down", "list_5xx_next",
    "list_bad_token_next", "list_endless")}


# -- a tiny Connect client ----------------------------------------------------------------------

def envelope(obj, flags=0):
    payload = json.dumps(obj).encode()
    return struct.pack(">BI", flags, len(payload)) + payload


class Dropped(Exception):
    """The stream ended without an end-of-stream frame (a transport failure)."""


class Stream:
    """A server-streaming Connect call; next() -> (flags, message) one frame at a time."""

    def __init__(self, port, sb, rpc, msg, headers=None, timeout=20):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        h = {"Content-Type": "application/connect+json", "E2b-Sandbox-Id": sb["sandboxID"],
             "E2b-Sandbox-Port": "49983", "X-Access-Token": sb.get("envdAccessToken", "")}
        h.update(headers or {})
        self.conn.request("POST", "/process.Process/" + rpc, envelope(msg), h)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.frames = []

    def _read(self, n):
        try:
            data = self.resp.read(n)
        except (http.client.IncompleteRead, ConnectionError, OSError) as e:
            raise Dropped(repr(e))
        if len(data) < n:
            raise Dropped("short read")
        return data

    def next(self):
        flags, n = struct.unpack(">BI", self._read(5))
        msg = json.loads(self._read(n))
        self.frames.append((flags, msg))
        return flags, msg

    def events(self):
        """Reads to the end-of-stream frame -> ([event], end_stream_message)."""
        evs = []
        while True:
            flags, msg = self.next()
            if flags & 0x02:
                try:
                    rest = self.resp.read()
                except http.client.IncompleteRead:
                    raise Dropped("no last chunk after the end-of-stream frame")
                assert rest == b"", rest
                return evs, msg
            evs.append(msg["event"])

    def close(self):
        self.conn.close()


def output(events, name="stdout"):
    return b"".join(base64.b64decode(e["data"][name]) for e in events if "data" in e and name in e["data"])


class E2BDoubleTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv, _, cls.port = e2b.start(api_key=KEY, keepalive_default_s=90)

    @classmethod
    def tearDownClass(cls):
        leftover = list(cls.srv.sandboxes)
        root = cls.srv.root
        cls.srv.close()
        assert leftover == [], "sandboxes left running: %s" % leftover
        assert not os.path.exists(root), "sandbox root not removed"

    def setUp(self):
        self.srv.opts.update(FAULTS)
        self.created = []

    def tearDown(self):
        for sid in self.created:
            self.api("DELETE", "/sandboxes/" + sid)
        self.assertEqual(self.srv.live_processes(), [])
        self.assertEqual([d for d in os.listdir(self.srv.root) if d != ".etc"], [])

    # helpers

    def http(self, method, path, body=None, headers=None, raw=False):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        c.request(method, path, body, headers or {})
        r = c.getresponse()
        data = r.read()
        c.close()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        if raw:
            return r.status, hdrs, data
        return r.status, hdrs, (json.loads(data) if data and "json" in hdrs.get("content-type", "") else data)

    def api(self, method, path, body=None, key=KEY):
        h = {"Content-Type": "application/json"}
        if key is not None:
            h["X-API-Key"] = key
        return self.http(method, path, body, h)

    def control(self, **cfg):
        st, _, state = self.http("POST", "/_control", cfg)
        self.assertEqual(st, 200, state)
        return state

    def create(self, **body):
        body.setdefault("templateID", "base")
        body.setdefault("timeout", 120)
        body.setdefault("secure", True)
        st, hdrs, sb = self.api("POST", "/sandboxes", body)
        self.assertEqual(st, 201, sb)
        self.created.append(sb["sandboxID"])
        return sb

    def envd_headers(self, sb, **extra):
        h = {"E2b-Sandbox-Id": sb["sandboxID"], "E2b-Sandbox-Port": "49983",
             "X-Access-Token": sb.get("envdAccessToken", "")}
        h.update(extra)
        return h

    def unary(self, sb, rpc, msg, **extra):
        return self.http("POST", "/" + rpc, msg, self.envd_headers(sb, **{"Content-Type": "application/json",
                                                                          "Connect-Protocol-Version": "1"}, **extra))

    def start(self, sb, cmd, headers=None, **msg):
        m = {"process": {"cmd": "/bin/bash", "args": ["-l", "-c", cmd]}, "stdin": False}
        for k in ("envs", "cwd"):
            if k in msg:
                m["process"][k] = msg.pop(k)
        m.update(msg)
        return Stream(self.port, sb, "Start", m, headers)

    def run_cmd(self, sb, cmd, **kw):
        s = self.start(sb, cmd, **kw)
        self.assertEqual(s.status, 200)
        try:
            return s.events()
        finally:
            s.close()

    # -- process.Process/Start ------------------------------------------------------------------

    def test_start_streams_start_data_end_and_end_of_stream(self):
        sb = self.create()
        self.assertEqual(sb["envdVersion"], "0.6.13")
        self.assertEqual(sb["templateID"], e2b.template_id("base"))
        for k in ("sandboxID", "clientID", "envdAccessToken"):
            self.assertRegex(sb[k], r"^[a-z0-9]+$")
        self.assertIsNone(sb["domain"])
        s = self.start(sb, "echo hi; echo err >&2; exit 3")
        self.assertEqual(s.status, 200)
        self.assertEqual(s.resp.getheader("Content-Type"), "application/connect+json")
        evs, eos = s.events()
        s.close()
        self.assertEqual(list(evs[0]), ["start"])
        self.assertIsInstance(evs[0]["start"]["pid"], int)
        self.assertEqual(output(evs), b"hi\n")
        self.assertEqual(output(evs, "stderr"), b"err\n")
        self.assertEqual(evs[-1], {"end": {"exitCode": 3, "exited": True, "status": "exit status 3",
                                           "error": "exit status 3"}})
        self.assertEqual(eos, {})
        self.assertEqual(s.frames[-1][0], 0x02)
        self.assertTrue(all(f == 0 for f, _ in s.frames[:-1]))
        # Success: exitCode (zero) and error are left out, as protojson does.
        evs, eos = self.run_cmd(sb, "true")
        self.assertEqual(evs[-1], {"end": {"exited": True, "status": "exit status 0"}})
        # A command that does not exist: a normal run with exit 127, as under envd's sh wrapper.
        s = Stream(self.port, sb, "Start", {"process": {"cmd": "no-such-cmd"}, "stdin": False})
        evs, _ = s.events()
        self.assertEqual(evs[-1]["end"]["exitCode"], 127)

    def test_exact_status_and_leftover_processes(self):
        sb = self.create()
        # A signal is reported as one, an exit code of 143 as an exit code.
        self.assertEqual(self.run_cmd(sb, "kill -TERM $$")[0][-1],
                         {"end": {"exitCode": -1, "status": "signal: terminated", "error": "signal: terminated"}})
        self.assertEqual(self.run_cmd(sb, "exit 143")[0][-1]["end"]["status"], "exit status 143")
        # What a command leaves running outlives it, as in a real sandbox: the end event comes when
        # the command exits, the leftover keeps writing files (a `> >(tee file)` wrapper works).
        t0 = time.time()
        evs, eos = self.run_cmd(sb, "(sleep 0.5; echo late > /tmp/late) & echo now")
        self.assertLess(time.time() - t0, 0.45)
        self.assertEqual((output(evs), evs[-1]["end"]["status"], eos), (b"now\n", "exit status 0", {}))
        evs, _ = self.run_cmd(sb, 'echo out > >(sleep 0.2; tee -a /tmp/tee.log > /dev/null); exit 4')
        self.assertEqual(evs[-1]["end"]["exitCode"], 4)
        time.sleep(0.8)
        h = self.envd_headers(sb)
        self.assertEqual(self.http("GET", "/files?path=/tmp/late", headers=h, raw=True)[2], b"late\n")
        self.assertEqual(self.http("GET", "/files?path=/tmp/tee.log", headers=h, raw=True)[2], b"out\n")

    def test_keepalives_while_silent(self):
        sb = self.create()
        t0 = time.time()
        evs, eos = self.run_cmd(sb, "sleep 3; echo done", headers={"Keepalive-Ping-Interval": "1"})
        kinds = [list(e)[0] for e in evs]
        self.assertGreaterEqual(kinds.count("keepalive"), 2, kinds)
        self.assertEqual(evs[1], {"keepalive": {}})
        self.assertEqual(kinds[0], "start")
        self.assertEqual(kinds[-2:], ["data", "end"])
        self.assertEqual(output(evs), b"done\n")
        self.assertGreater(time.time() - t0, 2.9)

    def test_connect_timeout_kills_the_process(self):
        sb = self.create()
        t0 = time.time()
        s = self.start(sb, "echo started; sleep 30", headers={"Connect-Timeout-Ms": "800"}, tag="slow")
        evs, eos = s.events()
        s.close()
        self.assertLess(time.time() - t0, 5)
        self.assertEqual(eos["error"]["code"], "deadline_exceeded")
        self.assertNotIn("end", [list(e)[0] for e in evs])
        pid = evs[0]["start"]["pid"]
        for _ in range(100):
            if self.unary(sb, "process.Process/List", {})[2] == {}:
                break
            time.sleep(0.05)
        self.assertEqual(self.unary(sb, "process.Process/List", {})[2], {})
        # The exit is kept for a while: Connect by pid replays start + end.
        c = Stream(self.port, sb, "Connect", {"process": {"pid": pid}})
        evs, eos = c.events()
        self.assertEqual(evs[0], {"start": {"pid": pid}})
        self.assertEqual(evs[-1]["end"]["status"], "signal: killed")
        self.assertEqual(eos, {})
        # A bad header is an error in the end-of-stream frame.
        evs, eos = self.run_cmd(sb, "true", headers={"Connect-Timeout-Ms": "12345678901"})
        self.assertEqual(eos["error"]["code"], "invalid_argument")

    def test_send_signal(self):
        sb = self.create()
        s = self.start(sb, "trap 'echo term; exit 1' TERM; echo ready; sleep 30 & wait", tag="sig")
        _, first = s.next()
        pid = first["event"]["start"]["pid"]
        _, ready = s.next()
        self.assertEqual(base64.b64decode(ready["event"]["data"]["stdout"]), b"ready\n")
        st, _, body = self.unary(sb, "process.Process/SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
        self.assertEqual((st, body), (200, {}))
        evs, eos = s.events()
        s.close()
        self.assertEqual(evs[-1], {"end": {"exitCode": -1, "status": "signal: killed", "error": "signal: killed"}})
        self.assertEqual(eos, {})
        # SIGTERM by tag reaches the command itself.
        s = self.start(sb, "echo ready; sleep 30", tag="t2")
        s.next(), s.next()
        st, _, body = self.unary(sb, "process.Process/SendSignal", {"process": {"tag": "t2"}, "signal": "SIGNAL_SIGHUP"})
        self.assertEqual((st, body["code"]), (400, "invalid_argument"))
        st, _, body = self.unary(sb, "process.Process/SendSignal", {"process": {"tag": "t2"}, "signal": "SIGNAL_SIGTERM"})
        self.assertEqual(st, 200, body)
        evs, eos = s.events()
        self.assertEqual(evs[-1]["end"]["status"], "signal: terminated")
        # Unknown pid -> not_found with the Connect error body and HTTP status.
        st, hdrs, body = self.unary(sb, "process.Process/SendSignal", {"process": {"pid": 999999}, "signal": "SIGNAL_SIGKILL"})
        self.assertEqual(st, 404)
        self.assertEqual(body, {"code": "not_found", "message": "process with pid 999999 not found"})

    def test_dropped_stream_then_reattach_by_pid(self):
        sb = self.create()
        self.control(drop_stream_next=1, drop_after_events=2)
        s = self.start(sb, "for i in 1 2 3 4 5 6 7 8; do echo line$i; sleep 0.25; done; exit 7", tag="job")
        _, first = s.next()
        pid = first["event"]["start"]["pid"]
        got = [s.next()[1]["event"] for _ in range(2)]
        self.assertEqual(output(got), b"line1\nline2\n")
        with self.assertRaises(Dropped):
            s.next()
        s.close()
        # The process kept running: List shows it, Connect re-attaches and streams the rest.
        st, _, body = self.unary(sb, "process.Process/List", {})
        self.assertEqual(st, 200)
        self.assertEqual([(p["pid"], p["tag"], p["config"]["cmd"]) for p in body["processes"]], [(pid, "job", "/bin/bash")])
        c = Stream(self.port, sb, "Connect", {"process": {"pid": pid}}, {"Keepalive-Ping-Interval": "1"})
        evs, eos = c.events()
        c.close()
        self.assertEqual(evs[0], {"start": {"pid": pid}})
        rest = output(evs).decode()
        self.assertTrue(rest.endswith("line8\n"), rest)
        self.assertNotIn("line1\n", rest)  # no replay: envd only forwards what comes after the attach
        self.assertEqual(evs[-1]["end"]["exitCode"], 7)
        self.assertEqual(eos, {})
        # Unknown process: not_found inside the end-of-stream frame of an HTTP 200 stream.
        c = Stream(self.port, sb, "Connect", {"process": {"tag": "nope"}})
        self.assertEqual(c.status, 200)
        evs, eos = c.events()
        self.assertEqual((evs, eos["error"]), ([], {"code": "not_found", "message": "process with tag nope not found"}))

    def test_stream_error_fault_and_start_delay(self):
        sb = self.create()
        self.control(stream_error_next=1, stream_error_after_events=1, start_delay_ms=300)
        t0 = time.time()
        s = self.start(sb, "echo one; sleep 0.5; echo two", tag="e")
        evs, eos = s.events()
        self.assertGreater(time.time() - t0, 0.3)
        self.assertEqual(eos["error"]["code"], "unavailable")
        self.assertEqual(output(evs), b"one\n")
        c = Stream(self.port, sb, "Connect", {"process": {"tag": "e"}})
        evs, eos = c.events()
        self.assertEqual((output(evs), evs[-1]["end"]["exited"], eos), (b"two\n", True, {}))

    def test_stdin_list_and_process_options(self):
        sb = self.create(envVars={"FROM_SANDBOX": "sb", "BOTH": "sandbox"})
        # envs, cwd, sandbox envVars (request envs win), HOME/USER of the user.
        self.run_cmd(sb, "mkdir -p /home/user/work/sub")
        evs, _ = self.run_cmd(sb, 'echo "$FROM_SANDBOX $BOTH $ONLY $HOME $USER $(pwd) $(id -u)"',
                              envs={"BOTH": "request", "ONLY": "x"}, cwd="/home/user/work/sub")
        self.assertEqual(output(evs), b"sb request x /home/user user /home/user/work/sub 1000\n")
        evs, _ = self.run_cmd(sb, 'echo "$HOME $(id -u) $(pwd)"',
                              headers={"Authorization": "Basic " + base64.b64encode(b"root:").decode()})
        self.assertEqual(output(evs), b"/root 0 /root\n")
        evs, eos = self.run_cmd(sb, "true", headers={"Authorization": "Basic " + base64.b64encode(b"bob:").decode()})
        self.assertEqual(eos["error"]["code"], "unauthenticated")
        evs, eos = self.run_cmd(sb, "true", cwd="/home/user/missing")
        self.assertEqual(eos["error"], {"code": "invalid_argument", "message": "cwd '/home/user/missing' does not exist"})
        # stdin: SendInput then CloseStdin.
        s = Stream(self.port, sb, "Start", {"process": {"cmd": "cat"}, "tag": "cat"})
        _, first = s.next()
        pid = first["event"]["start"]["pid"]
        st, _, body = self.unary(sb, "process.Process/List", {})
        self.assertEqual(body["processes"][0]["pid"], pid)
        self.assertEqual(body["processes"][0]["config"], {"cmd": "cat"})
        st, _, body = self.unary(sb, "process.Process/SendInput",
                                 {"process": {"pid": pid}, "input": {"stdin": base64.b64encode(b"\x00in\xff").decode()}})
        self.assertEqual((st, body), (200, {}))
        _, msg = s.next()
        self.assertEqual(base64.b64decode(msg["event"]["data"]["stdout"]), b"\x00in\xff")
        self.assertEqual(self.unary(sb, "process.Process/CloseStdin", {"process": {"tag": "cat"}})[0], 200)
        evs, eos = s.events()
        self.assertEqual((evs[-1]["end"]["status"], eos), ("exit status 0", {}))
        st, _, body = self.unary(sb, "process.Process/List", {})
        self.assertEqual((st, body), (200, {}))
        st, _, body = self.unary(sb, "filesystem.Filesystem/Stat", {"path": "/home/user"})
        self.assertEqual((st, body["code"]), (501, "unimplemented"))
        st, _, _ = self.http("POST", "/process.Process/List", b"{}", self.envd_headers(sb, **{"Content-Type": "text/plain"}))
        self.assertEqual(st, 415)

    # -- files ------------------------------------------------------------------------------------

    def test_files_upload_download_binary(self):
        sb = self.create()
        blob = bytes(range(256)) * 300 + b"\r\n--not-a-boundary\r\n\x00"
        h = self.envd_headers(sb)
        q = urllib.parse.urlencode({"path": "/home/user/dir/sub/bin.dat", "username": "user"})
        st, _, body = self.http("POST", "/files?" + q, blob, dict(h, **{"Content-Type": "application/octet-stream"}))
        self.assertEqual((st, body), (200, [{"path": "/home/user/dir/sub/bin.dat", "name": "bin.dat", "type": "file"}]))
        st, hdrs, data = self.http("GET", "/files?" + q, headers=h, raw=True)
        self.assertEqual((st, hdrs["content-type"]), (200, "application/octet-stream"))
        self.assertEqual(data, blob)
        # The process sees the same bytes, owned by the user.
        evs, _ = self.run_cmd(sb, "sha256sum < dir/sub/bin.dat; stat -c %U dir/sub/bin.dat")
        self.assertEqual(output(evs).decode().split()[0], hashlib.sha256(blob).hexdigest())
        self.assertEqual(output(evs).decode().split()[-1], "user")
        # multipart/form-data, field "file", relative path = under the user's home.
        boundary = "xBoUnDaRyx"
        mp = (b"--" + boundary.encode() + b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n"
              b"Content-Type: application/octet-stream\r\n\r\n" + blob + b"\r\n--" + boundary.encode() + b"--\r\n")
        st, _, body = self.http("POST", "/files?path=rel.bin", mp,
                                dict(h, **{"Content-Type": "multipart/form-data; boundary=" + boundary}))
        self.assertEqual((st, body[0]["path"]), (200, "/home/user/rel.bin"))
        self.assertEqual(self.http("GET", "/files?path=/home/user/rel.bin", headers=h, raw=True)[2], blob)
        # Range (to follow a log from an offset) and gzip.
        st, hdrs, data = self.http("GET", "/files?path=rel.bin", headers=dict(h, Range="bytes=10-"), raw=True)
        self.assertEqual((st, data, hdrs["content-range"]), (206, blob[10:], "bytes 10-%d/%d" % (len(blob) - 1, len(blob))))
        st, hdrs, data = self.http("GET", "/files?path=rel.bin", headers=dict(h, **{"Accept-Encoding": "gzip"}), raw=True)
        import gzip
        self.assertEqual((hdrs["content-encoding"], gzip.decompress(data)), ("gzip", blob))
        # /tmp is shared with processes: what a command writes there can be downloaded.
        self.run_cmd(sb, "echo 42 > /tmp/task.exit")
        self.assertEqual(self.http("GET", "/files?path=/tmp/task.exit", headers=h, raw=True)[2], b"42\n")
        # Errors: the envd JSON shape.
        st, _, body = self.http("GET", "/files?path=/home/user/none", headers=h)
        self.assertEqual((st, body), (404, {"code": 404, "message": "path '/home/user/none' does not exist"}))
        st, _, body = self.http("GET", "/files?path=/home/user/dir", headers=h)
        self.assertEqual((st, body["code"]), (400, 400))
        st, _, body = self.http("GET", "/files?path=x&username=bob", headers=h)
        self.assertEqual(st, 401)
        st, _, body = self.http("POST", "/files?path=/home/user/x", b"x", dict(h, **{"Content-Type": "text/plain"}))
        self.assertEqual(st, 400)
        st, _, body = self.http("POST", "/files?path=/usr/x", b"x", dict(h, **{"Content-Type": "application/octet-stream"}))
        self.assertEqual(st, 500)
        # Signed URL instead of the token.
        path, exp = "/home/user/rel.bin", int(time.time()) + 60
        raw = "%s:read::%s:%d" % (path, sb["envdAccessToken"], exp)
        sig = "v1_" + base64.b64encode(hashlib.sha256(raw.encode()).digest()).decode().rstrip("=")
        q = urllib.parse.urlencode({"path": path, "signature": sig, "signature_expiration": exp})
        no_token = {"E2b-Sandbox-Id": sb["sandboxID"], "E2b-Sandbox-Port": "49983"}
        self.assertEqual(self.http("GET", "/files?" + q, headers=no_token, raw=True)[2], blob)
        self.assertEqual(self.http("GET", "/files?path=" + path, headers=no_token)[0], 401)

    # -- control plane ----------------------------------------------------------------------------

    def test_list_by_metadata(self):
        a = self.create(metadata={"task_id": "1", "user_id": "u1", "app": "aicode"})
        b = self.create(metadata={"task_id": "2", "user_id": "u1", "app": "aicode"})
        c = self.create(metadata={"task_id": "3", "user_id": "u2", "app": "other"}, templateID="aicode-agents")

        def ids(path):
            st, hdrs, body = self.api("GET", path)
            self.assertEqual(st, 200, body)
            return sorted(s["sandboxID"] for s in body), hdrs

        q = lambda **m: urllib.parse.quote(urllib.parse.urlencode(m))  # noqa: E731
        self.assertEqual(ids("/v2/sandboxes?metadata=" + q(user_id="u1", app="aicode"))[0],
                         sorted([a["sandboxID"], b["sandboxID"]]))
        self.assertEqual(ids("/v2/sandboxes?state=running&metadata=" + q(task_id="3"))[0], [c["sandboxID"]])
        self.assertEqual(ids("/sandboxes?metadata=" + q(task_id="2"))[0], [b["sandboxID"]])
        self.assertEqual(ids("/v2/sandboxes?state=paused")[0], [])
        got, hdrs = ids("/v2/sandboxes?limit=2&metadata=" + q(app="aicode"))
        self.assertEqual((len(got), "x-next-token" in hdrs), (2, False))
        # Newest first; the next token is the cursor of the page's last entry.
        st, hdrs, page = self.api("GET", "/v2/sandboxes?limit=1")
        self.assertEqual((st, [s["sandboxID"] for s in page]), (200, [c["sandboxID"]]))
        st, hdrs, page2 = self.api("GET", "/v2/sandboxes?limit=1&nextToken=" + hdrs["x-next-token"])
        self.assertEqual((st, [s["sandboxID"] for s in page2]), (200, [b["sandboxID"]]))
        listed = [s for s in self.api("GET", "/v2/sandboxes")[2] if s["sandboxID"] == c["sandboxID"]][0]
        self.assertEqual(listed["metadata"], {"task_id": "3", "user_id": "u2", "app": "other"})
        self.assertEqual((listed["state"], listed["alias"], listed["templateID"]),
                         ("running", "aicode-agents", e2b.template_id("aicode-agents")))
        for k in ("startedAt", "endAt"):
            self.assertRegex(listed[k], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertEqual(self.api("GET", "/v2/sandboxes?metadata=broken")[0], 400)

    def test_list_pages_like_e2b(self):
        # GET /v2/sandboxes as E2B pages it (infra packages/api/internal/utils/pagination.go and
        # handlers/sandboxes_list.go): limit 1..100 (default 100), newest first, X-Next-Token =
        # base64url("<startedAt RFC3339Nano>__<sandboxID>") of the page's last entry, no header
        # on the last page, 400 "Invalid next token" for a token that does not parse.
        self.control(max_sandboxes=300)
        self.addCleanup(self.control, max_sandboxes=e2b.DEFAULTS["max_sandboxes"])
        made = [self.create(metadata={"app": "pages", "n": str(i)})["sandboxID"] for i in range(205)]
        other = self.create(metadata={"app": "other"})["sandboxID"]
        meta = "&metadata=" + urllib.parse.quote("app=pages")

        def read_all(extra="", limit=None):
            pages, token = [], None
            while True:
                path = "/v2/sandboxes?state=running" + meta + extra + ("&limit=%d" % limit if limit else "")
                st, hdrs, page = self.api("GET", path + ("&nextToken=" + urllib.parse.quote(token) if token else ""))
                self.assertEqual(st, 200, page)
                self.assertEqual(hdrs["x-total-running"], "205")
                pages.append([s["sandboxID"] for s in page])
                token = hdrs.get("x-next-token")
                if not token:
                    return pages
                self.assertEqual(token, e2b.list_cursor(self.srv.sandboxes[page[-1]["sandboxID"]].started_ns,
                                                        page[-1]["sandboxID"]))
                self.assertLess(len(pages), 300, "the next token never ends")

        pages = read_all()
        self.assertEqual([len(p) for p in pages], [100, 100, 5])
        self.assertEqual(sum(pages, []), made[::-1])  # newest first, each once, no other app
        self.assertEqual([len(p) for p in read_all(limit=40)], [40] * 5 + [5])
        self.assertEqual(sum(read_all("&order=asc", limit=100), []), made)
        # The cursor is a position: killing the entry it names (and others) shifts nothing.
        st, hdrs, first = self.api("GET", "/v2/sandboxes?limit=10" + meta)
        for s in first[5:]:
            self.assertEqual(self.api("DELETE", "/sandboxes/" + s["sandboxID"])[0], 204)
        st, _, second = self.api("GET", "/v2/sandboxes?limit=10" + meta + "&nextToken=" + hdrs["x-next-token"])
        self.assertEqual((st, [s["sandboxID"] for s in second]), (200, made[::-1][10:20]))
        self.created = [sid for sid in self.created if sid in self.srv.sandboxes]
        for bad in ("not-a-cursor!", "eHl6", base64.urlsafe_b64encode(b"yesterday__abc").decode(),
                    e2b.list_cursor(0, "x").rstrip("=")):
            st, _, body = self.api("GET", "/v2/sandboxes?nextToken=" + urllib.parse.quote(bad))
            self.assertEqual((st, body), (400, {"code": 400, "message": "Invalid next token"}), bad)
        for limit in ("0", "101", "x"):
            self.assertEqual(self.api("GET", "/v2/sandboxes?limit=" + limit)[0], 400, limit)
        # Faults: a 500, a next token that does not parse, a next token that never ends.
        self.control(list_5xx_next=1)
        self.assertEqual(self.api("GET", "/v2/sandboxes")[:3:2],
                         (500, {"code": 500, "message": "Error when getting sandboxes"}))
        self.assertEqual(self.api("GET", "/v2/sandboxes")[0], 200)
        self.control(list_bad_token_next=1)
        st, hdrs, _ = self.api("GET", "/v2/sandboxes?limit=100" + meta)
        self.assertEqual(self.api("GET", "/v2/sandboxes?nextToken=" + urllib.parse.quote(hdrs["x-next-token"]))[0],
                         400)
        self.assertEqual(self.srv.opts["list_bad_token_next"], 0)
        self.control(list_endless=True)
        try:
            seen, token = set(), None
            for _ in range(5):
                st, hdrs, page = self.api("GET", "/v2/sandboxes?metadata=" + urllib.parse.quote("app=other") +
                                          ("&nextToken=" + urllib.parse.quote(token) if token else ""))
                self.assertEqual([s["sandboxID"] for s in page], [other])  # starts over every time
                token = hdrs["x-next-token"]
                self.assertNotIn(token, seen)
                seen.add(token)
        finally:
            self.control(list_endless=False)
        self.assertNotIn("x-next-token", self.api("GET", "/v2/sandboxes?metadata=" +
                                                  urllib.parse.quote("app=other"))[1])

    def test_kill_then_404_everywhere(self):
        sb = self.create()
        sid = sb["sandboxID"]
        s = self.start(sb, "echo x; sleep 30")
        s.next(), s.next()
        st, _, body = self.api("GET", "/sandboxes/" + sid)
        self.assertEqual((st, body["sandboxID"], body["envdAccessToken"], body["state"]),
                         (200, sid, sb["envdAccessToken"], "running"))
        self.assertEqual(self.api("DELETE", "/sandboxes/" + sid)[0], 204)
        with self.assertRaises(Dropped):  # the VM is gone: the stream is cut
            s.events()
        for method, path, body in (("GET", "/sandboxes/" + sid, None), ("DELETE", "/sandboxes/" + sid, None),
                                   ("POST", "/sandboxes/%s/timeout" % sid, {"timeout": 30})):
            st, _, err = self.api(method, path, body)
            self.assertEqual(st, 404)
            self.assertEqual(err, {"code": 404, "message": "sandbox \"%s\" doesn't exist or you don't have access to it" % sid})
        st, _, body = self.unary(sb, "process.Process/List", {})
        self.assertEqual((st, body), (502, {"sandboxId": sid, "message": "The sandbox was not found"}))
        self.assertEqual(self.srv.state()["killed"][sid], "killed")

    def test_timeout_expiry_and_extension(self):
        sb = self.create(timeout=1)
        sid = sb["sandboxID"]
        s = self.start(sb, "echo x; sleep 30")
        s.next(), s.next()
        time.sleep(1.3)
        self.assertEqual(self.api("GET", "/sandboxes/" + sid)[0], 404)
        with self.assertRaises(Dropped):
            s.events()
        self.assertEqual(self.srv.state()["killed"][sid], "expired")
        # Extending: /timeout sets the TTL from now (shorter or longer), /refreshes only extends.
        sb = self.create(timeout=1)
        sid = sb["sandboxID"]
        self.assertEqual(self.api("POST", "/sandboxes/%s/timeout" % sid, {"timeout": 30})[0], 204)
        self.assertEqual(self.api("POST", "/sandboxes/%s/refreshes" % sid, {"duration": 5})[0], 204)
        time.sleep(1.2)
        st, _, body = self.api("GET", "/sandboxes/" + sid)
        self.assertEqual(st, 200)
        st, _, body = self.api("POST", "/sandboxes/%s/connect" % sid, {"timeout": 10})
        self.assertEqual((st, body["sandboxID"]), (200, sid))
        self.assertEqual(self.api("POST", "/sandboxes/%s/timeout" % sid, {"timeout": 0})[2],
                         {"code": 400, "message": "Timeout must be greater than 0"})
        self.assertEqual(self.api("POST", "/sandboxes/%s/timeout" % sid, {"timeout": 999999})[2]["message"],
                         "Timeout cannot be greater than 24 hours")
        # A sandbox that expires early (fault), and an explicit expiry from /_control.
        self.control(expire_next=1, expire_after_s=0.4)
        early = self.create(timeout=600)
        self.control(expire={"sandbox": sid, "in_s": 0.2})
        time.sleep(0.9)
        self.assertEqual(self.api("GET", "/sandboxes/" + early["sandboxID"])[0], 404)
        self.assertEqual(self.api("GET", "/sandboxes/" + sid)[0], 404)

    def test_create_errors_and_faults(self):
        st, _, body = self.api("POST", "/sandboxes", {"templateID": "nope", "timeout": 10})
        self.assertEqual((st, body), (404, {"code": 404, "message": "template 'nope' not found"}))
        st, _, body = self.api("POST", "/sandboxes", {"timeout": 10})
        self.assertEqual(st, 400)
        self.control(create_429_next=1, retry_after=3)
        st, hdrs, body = self.api("POST", "/sandboxes", {"templateID": "base", "timeout": 10})
        self.assertEqual((st, hdrs["retry-after"], body), (429, "3", {"code": 429, "message": "Rate limit exceeded"}))
        self.control(create_5xx_next=1, create_5xx_status=503)
        st, _, body = self.api("POST", "/sandboxes", {"templateID": "base", "timeout": 10})
        self.assertEqual((st, body["code"], body["error_code"]), (503, 503, "sandbox_capacity_unavailable"))
        self.control(create_delay_ms=400)
        t0 = time.time()
        sb = self.create(timeout=10)
        self.assertGreater(time.time() - t0, 0.39)
        # Omitted timeout: the API's default is 15 s.
        self.control(create_delay_ms=0)
        st, _, body = self.api("POST", "/sandboxes", {"templateID": "base"})
        self.assertEqual(st, 201)
        self.created.append(body["sandboxID"])
        detail = self.api("GET", "/sandboxes/" + body["sandboxID"])[2]
        self.assertNotIn("envdAccessToken", body)  # secure omitted: no envd token
        started = time.mktime(time.strptime(detail["startedAt"][:19], "%Y-%m-%dT%H:%M:%S"))
        ended = time.mktime(time.strptime(detail["endAt"][:19], "%Y-%m-%dT%H:%M:%S"))
        self.assertIn(ended - started, (14, 15, 16))
        # The team's concurrency cap -> 429 with E2B's message.
        self.srv.opts["max_sandboxes"] = len(self.srv.sandboxes)
        try:
            st, _, body = self.api("POST", "/sandboxes", {"templateID": "base", "timeout": 10})
            self.assertEqual(st, 429)
            self.assertIn("maximum number of concurrent E2B sandboxes", body["message"])
        finally:
            self.srv.opts["max_sandboxes"] = e2b.DEFAULTS["max_sandboxes"]
        self.assertIn(sb["sandboxID"], self.srv.sandboxes)

    def test_auth(self):
        for key in ("e2b_wrong", None):
            st, _, body = self.api("POST", "/sandboxes", {"templateID": "base"}, key=key)
            self.assertEqual((st, body["code"]), (401, 401))
        self.assertEqual(self.api("GET", "/v2/sandboxes", key="nope")[0], 401)
        sb = self.create()
        bad = dict(sb, envdAccessToken="wrong")
        s = Stream(self.port, bad, "Start", {"process": {"cmd": "true"}})
        self.assertEqual(s.status, 401)
        self.assertEqual(json.loads(s.resp.read())["code"], 401)
        st, _, body = self.unary(bad, "process.Process/List", {})
        self.assertEqual(st, 401)
        st, _, body = self.http("GET", "/files?path=/tmp", headers=self.envd_headers(bad))
        self.assertEqual((st, body["message"]), (401, "access token present in header but does not match"))
        self.assertEqual(self.http("GET", "/health", headers=self.envd_headers(bad))[0], 204)
        # The log never holds the key or a token.
        text = json.dumps(self.srv.requests)
        self.assertNotIn(KEY, text)
        self.assertNotIn(sb["envdAccessToken"], text)

    def test_header_routing(self):
        a, b = self.create(), self.create()
        self.run_cmd(a, "echo A > who")
        self.run_cmd(b, "echo B > who")
        for sb, want in ((a, b"A\n"), (b, b"B\n")):
            self.assertEqual(self.http("GET", "/files?path=who", headers=self.envd_headers(sb), raw=True)[2], want)
        # A's token is not B's.
        cross = dict(b, envdAccessToken=a["envdAccessToken"])
        self.assertEqual(self.unary(cross, "process.Process/List", {})[0], 401)
        # Host routing (49983-<id>.<domain>) reaches the same envd.
        h = {"Host": "49983-%s.e2b.app" % a["sandboxID"], "X-Access-Token": a["envdAccessToken"]}
        self.assertEqual(self.http("GET", "/files?path=who", headers=h, raw=True)[2], b"A\n")
        # Another port of a live sandbox: the proxy's "port is not open".
        st, _, body = self.http("GET", "/files?path=who", headers=dict(self.envd_headers(a), **{"E2b-Sandbox-Port": "8080"}))
        self.assertEqual((st, body["message"]), (502, "The sandbox is running but port is not open"))
        st, _, body = self.unary({"sandboxID": "nosuchsandbox"}, "process.Process/List", {})
        self.assertEqual((st, body["message"]), (502, "The sandbox was not found"))

    def test_envd_unavailable(self):
        sb = self.create()
        self.control(envd_unavailable_next=1, envd_unavailable_status=502)
        st, hdrs, body = self.unary(sb, "process.Process/List", {})
        self.assertEqual((st, hdrs["content-type"]), (502, "text/html"))
        self.assertEqual(self.unary(sb, "process.Process/List", {})[0], 200)
        self.control(envd_down=True, envd_unavailable_status=503)
        s = self.start(sb, "true")
        self.assertEqual(s.status, 503)
        s.close()
        self.control(envd_down=False)
        self.assertEqual(self.run_cmd(sb, "true")[1], {})

    def test_log_file_and_control_state(self):
        state = self.control()
        self.assertEqual(state["opts"]["api_key"], "[redacted]")
        sb = self.create(metadata={"task_id": "9"}, envVars={"SECRET_ONE": "s3cr3t-value"})
        self.run_cmd(sb, "true", envs={"ANTHROPIC_API_KEY": "sk-ant-hidden"})
        entries = [e for e in self.srv.requests if e.get("sandbox_id") == sb["sandboxID"]]
        self.assertEqual([(e["method"], e["path"], e.get("rpc")) for e in entries],
                         [("POST", "/sandboxes", None), ("POST", "/process.Process/Start", "process.Process/Start")])
        text = json.dumps(self.srv.requests)
        for secret in ("s3cr3t-value", "sk-ant-hidden", sb["envdAccessToken"], KEY):
            self.assertNotIn(secret, text)
        self.assertEqual(entries[1]["body"]["process"]["envs"], {"ANTHROPIC_API_KEY": "[redacted]"})
        live = [s for s in self.control()["sandboxes"] if s["sandboxID"] == sb["sandboxID"]][0]
        self.assertEqual(live["metadata"], {"task_id": "9"})


if __name__ == "__main__":
    unittest.main()
