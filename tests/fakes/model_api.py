"""The shared base of the fake model APIs anthropic_api.py and openai_api.py (see their docstrings
and README.md): the script / prompt planner, and a server (on fakekit.py's, which records every
request and answers the control routes) that injects the faults, checks the API key and carries
the SSE and hang plumbing. POST /_fake/reset also forgets which scripted turn errors were answered.

Each fake subclasses Handler for its own wire format: the class attributes of Handler below, and
_error(status, message=None), _route(url, path, body) and _stream(answer, hang). A request goes:
control routes (/_fake/..., not logged) -> logged -> GET or HEAD / (200) -> _before_checks(path)
-> delay_ms -> fail_next / fail_rate (_error(fail_status)) -> API key (_error(401)) -> _route.
"""
import argparse
import json
import os
import re
import select
import shlex
import sys
import time
import uuid

try:
    from . import fakekit
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import fakekit

DEFAULTS = {
    "script": None,        # dict or path of a JSON file (the "turns" script of the fakes)
    "api_keys": None,      # list of accepted keys; None: any non-empty key
    "model": None,         # model name in answers (default: the requested one)
    "fail_rate": 0.0, "fail_next": 0, "fail_status": 500,
    "delay_ms": 0, "chunk_delay_ms": 0,
    "hang": False, "hang_next": 0, "stream_error_next": 0,
    "log": None, "seed": None,
}

# -- the script / prompt planner ----------------------------------------------------------------

DIRECTIVE = re.compile(r"^\s*(write|create|edit|bash|run|reply|fake-error|fake-delay|fake-hang)\b\s*(.*)$",
                       re.IGNORECASE)


def load_script(script):
    if isinstance(script, str):
        with open(script) as f:
            return json.load(f)
    return script


def parse_directives(text):
    """Directives of a prompt -> {"turns": [...], "final": str|None, "fault": {...}} or None."""
    turns, final, fault = [], None, {}
    for line in text.splitlines():
        m = DIRECTIVE.match(line)
        if not m:
            continue
        verb, rest = m.group(1).lower(), m.group(2).strip()
        if verb in ("write", "create"):
            path, sep, content = rest.partition(":")
            if not sep or not path.strip() or " " in path.strip():
                continue
            content = content.strip()
            if content.startswith('"'):
                try:
                    content = json.loads(content)
                except ValueError:
                    content += "\n"
            else:
                content += "\n"
            turns.append({"write": {"path": path.strip(), "content": content}})
        elif verb == "edit":
            path, sep, change = rest.partition(":")
            old, arrow, new = change.partition("=>")
            if sep and arrow and path.strip() and " " not in path.strip():
                turns.append({"edit": {"path": path.strip(), "old": old.strip(), "new": new.strip()}})
        elif verb in ("bash", "run") and rest.startswith(":"):
            turns.append({"bash": rest[1:].strip()})
        elif verb == "reply" and rest.startswith(":"):
            final = rest[1:].strip()
        elif verb == "fake-error" and rest.startswith(":"):
            fault["error"] = int(rest[1:].strip().split()[0])
        elif verb == "fake-delay" and rest.startswith(":"):
            fault["delay_ms"] = int(rest[1:].strip().split()[0])
        elif verb == "fake-hang":
            fault["hang"] = True
    if not turns and final is None and not fault:
        return None
    return {"turns": turns, "final": final, "fault": fault}


def describe(turn):
    for k in ("write", "edit"):
        if k in turn:
            return "%s %s" % ("wrote" if k == "write" else "edited", turn[k]["path"])
    if "bash" in turn:
        return "ran `%s`" % turn["bash"]
    return None


def final_text(plan, last_error=None):
    if plan.get("final"):
        text = plan["final"]
    else:
        done = [d for d in (describe(t) for t in plan.get("turns", [])) if d]
        text = ("Done: " + "; ".join(done) + ".") if done else "Hello from the fake model. Nothing to do."
    if last_error:
        text += "\n(The last tool reported an error: %s)" % last_error[:300]
    return text


def shell_for(turn):
    """A shell command doing a write/edit/bash turn (for agents whose only tool is a shell)."""
    if "bash" in turn:
        return turn["bash"]
    if "write" in turn:
        p, c = turn["write"]["path"], turn["write"]["content"]
        d = os.path.dirname(p)
        return ("mkdir -p %s && " % shlex.quote(d) if d else "") + "printf '%%s' %s > %s" % (
            shlex.quote(c), shlex.quote(p))
    if "edit" in turn:
        e = turn["edit"]
        prog = ("import sys; p, o, n = sys.argv[1:]; s = open(p).read(); "
                "assert o in s, 'old text not found'; open(p, 'w').write(s.replace(o, n, 1))")
        return "python3 -c %s %s %s %s" % (shlex.quote(prog), shlex.quote(e["path"]), shlex.quote(e["old"]),
                                           shlex.quote(e["new"]))
    return None


def tokens_of(obj):
    return max(1, len(json.dumps(obj)) // 4)


# -- the server ---------------------------------------------------------------------------------

class Handler(fakekit.Handler):
    request_id_prefix, request_id_hex = "req_", 24  # request id: prefix + that many hex digits
    stream_id_header = "request-id"  # the header of the request id on SSE answers (JSON ones: request-id)
    missing_key_message = None       # 401 message without a key
    wrong_key_message = None         # 401 message for a key not in api_keys; {key_prefix}: its first 3 characters

    def _send(self, status, obj, headers=None, ctype="application/json"):
        body = b"" if obj is None else json.dumps(obj).encode()
        self._send_bytes(status, body, [("Content-Type", ctype), ("request-id", self.request_id)]
                         + list((headers or {}).items()))

    def _send_json(self, status, obj):  # the control routes
        self._send(status, obj)

    def _take(self, name):
        with self.server.lock:
            if self.server.opts.get(name, 0) > 0:
                self.server.opts[name] -= 1
                return True
        return False

    def _api_key(self):
        """The key the request carries: Authorization: Bearer KEY (a fake may accept more)."""
        auth = self.headers.get("Authorization") or ""
        return auth[7:].strip() if auth.lower().startswith("bearer ") else ""

    def _before_checks(self, path):
        """A fake answers here what it answers before faults and the key check; True if it did."""
        return False

    def _handle(self):
        self.request_id = self.request_id_prefix + uuid.uuid4().hex[:self.request_id_hex]
        req = self._json_request()
        if req is None:  # a control route, answered
            return
        url, body = req
        srv, opts = self.server, self.server.opts
        path = url.path.rstrip("/")
        if path == "" and self.command in ("HEAD", "GET"):
            return self._send(200, None if self.command == "HEAD" else {"ok": True})
        if self._before_checks(path):
            return
        if opts.get("delay_ms"):
            time.sleep(opts["delay_ms"] / 1000.0)
        if self._take("fail_next") or (opts.get("fail_rate") and srv.rng.random() < opts["fail_rate"]):
            return self._error(int(opts.get("fail_status") or 500))
        key = self._api_key()
        if not key:
            return self._error(401, self.missing_key_message)
        if opts.get("api_keys") and key not in opts["api_keys"]:
            return self._error(401, self.wrong_key_message.format(key_prefix=key[:3]))
        return self._route(url, path, body)

    do_GET = do_POST = do_HEAD = _handle

    # -- one model turn ----------------------------------------------------------------------------
    def _plan(self, text):
        """(plan, fault) of this conversation: the script, else the directives of the instruction
        text. A fault's delay_ms is slept here; answering its error is the caller's."""
        script = load_script(self.server.opts.get("script"))
        plan = script if script else (parse_directives(text) or {"turns": [], "final": None, "fault": {}})
        fault = plan.get("fault") or {}
        if fault.get("delay_ms"):
            time.sleep(fault["delay_ms"] / 1000.0)
        return plan, fault

    def _turn_error(self, turn_index, turn):
        """The status a turn with "error" answers the first "times" (1) times it is reached, else
        None, after sleeping the turn's delay_ms."""
        if turn.get("error"):
            srv = self.server
            key = (turn_index, json.dumps(turn, sort_keys=True))
            with srv.lock:
                seen = srv.turn_errors.get(key, 0)
                srv.turn_errors[key] = seen + 1
            if seen < turn.get("times", 1):
                return int(turn["error"])
        if turn.get("delay_ms"):
            time.sleep(turn["delay_ms"] / 1000.0)
        return None

    def _answer(self, body, answer, fault, turn):
        """answer as one JSON object, or through _stream when the request asked for a stream; or no
        end at all when the fault, the turn, the hang option or hang_next says so."""
        hang = fault.get("hang") or turn.get("hang") or self.server.opts.get("hang") or self._take("hang_next")
        if not body.get("stream"):
            return self._hang_plain() if hang else self._send(200, answer)
        self._stream(answer, hang)

    # -- SSE and hangs -----------------------------------------------------------------------------
    def _start_sse(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header(self.stream_id_header, self.request_id)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.entry["status"] = 200

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _event(self, name, obj):
        self._chunk(("event: %s\ndata: %s\n\n" % (name, json.dumps(obj))).encode())
        if self.server.opts.get("chunk_delay_ms"):
            time.sleep(self.server.opts["chunk_delay_ms"] / 1000.0)

    def _hang_plain(self):
        self.entry["status"] = None
        self.close_connection = True
        while True:  # never answers; returns when the client gives up (EOF on the socket)
            readable, _, _ = select.select([self.connection], [], [], 1.0)
            try:
                if readable and not self.connection.recv(65536):
                    return
            except OSError:
                return


class Server(fakekit.RecordingServer):
    def __init__(self, addr, opts, handler, defaults=DEFAULTS):
        self.turn_errors = {}
        super().__init__(addr, opts, handler, defaults)

    def reset_state(self):
        self.turn_errors.clear()


def start(handler, port=0, host="127.0.0.1", **opts):
    """Starts a server with this Handler subclass in a daemon thread. Returns (server, thread, port)."""
    return fakekit.serve(Server((host, port), opts, handler))


def common_args(p):
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--script", help="JSON script of turns (default: directives in the prompt)")
    p.add_argument("--api-key", action="append", dest="api_keys", help="accepted key (repeatable; default any)")
    p.add_argument("--model", help="model name in answers (default: the requested one)")
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--fail-next", type=int, default=0)
    p.add_argument("--fail-status", type=int, default=500)
    p.add_argument("--delay-ms", type=int, default=0)
    p.add_argument("--chunk-delay-ms", type=int, default=0, help="pause between SSE events")
    p.add_argument("--hang", action="store_true", help="every model answer streams forever")
    p.add_argument("--hang-next", type=int, default=0)
    p.add_argument("--stream-error-next", type=int, default=0)
    p.add_argument("--seed", type=int)
    p.add_argument("--log", help="append one JSON line per request to this file")
    return p


def main(name, description, start):
    """The command line of a fake: its options, then serve until SIGINT/SIGTERM."""
    a = common_args(argparse.ArgumentParser(description=description)).parse_args()
    opts = {k: v for k, v in vars(a).items() if k not in ("port", "host")}
    server, thread, port = start(port=a.port, host=a.host, **opts)
    print("%s listening on http://%s:%d" % (name, a.host, port), flush=True)
    try:
        thread.join()
    except KeyboardInterrupt:
        pass
