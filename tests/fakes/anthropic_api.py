#!/usr/bin/python3
"""A fake Anthropic Messages API that scripts a coding agent (Claude Code) through tool calls.

    python3 tests/fakes/anthropic_api.py --port 18100 [--script turns.json] [--api-key K]
        [--fail-rate 0.1] [--fail-next 2 --fail-status 529] [--delay-ms 100] [--hang] [--log a.jsonl]

    from anthropic_api import start
    server, thread, port = start(script={"turns": [{"write": {"path": "hello.txt", "content": "hi\\n"}}]})
    # ANTHROPIC_BASE_URL=http://127.0.0.1:<port>
    server.requests     # method, path, query, headers (x-api-key included), body (parsed JSON), status

Endpoints: POST /v1/messages (also ?beta=true): SSE when "stream": true (message_start, ping,
content_block_start, content_block_delta (text_delta / input_json_delta), content_block_stop,
message_delta (stop_reason, usage), message_stop), else one JSON message.
POST /v1/messages/count_tokens, GET /v1/models, HEAD / and GET / (200).

What the model "does" (one model turn per request; which turn is due is worked out from the
tool_use/tool_result pairs after the latest user instruction, so turn N is answered once the result
of turn N-1 is there; a Write refused with "File has not been read yet" is followed by a Read and the
same Write again, as a real model would do):

1. A script (opts["script"], a dict or a JSON file path):
       {"turns": [ {"write": {"path": "hello.txt", "content": "hello\\n"}},
                   {"edit":  {"path": "README.md", "old": "foo", "new": "bar"}},
                   {"bash":  "rm old.txt && chmod +x run.sh"},
                   {"tool_use": {"name": "Glob", "input": {"pattern": "*"}}},   # any raw tool call
                   {"text": "All done."} ],                                      # final answer
        "final": "All done."}
   Any turn may also carry "text" (said before the tool call), "error": STATUS with "times": N
   (that turn answers STATUS the first N times it is reached, then works), "hang": true (stream
   never ends) or "delay_ms". "edit" becomes Read then Edit (Claude Code refuses to Edit a file it
   has not read). Relative paths are made absolute with the working directory from the system prompt.
2. Otherwise the prompt itself (the latest user text) is read for directives, one per line:
       write PATH: CONTENT        create/overwrite PATH with CONTENT + "\\n" (CONTENT may be a JSON string: exact)
       edit PATH: OLD => NEW      replace the first OLD by NEW
       bash: COMMAND              run a shell command (also "run: COMMAND")
       reply: TEXT                the final answer
       fake-error: STATUS         every request of this conversation answers STATUS (400 ends the CLI at once)
       fake-hang                  the stream never ends (cancel / timeout tests)
       fake-delay: MS             wait MS before each answer
   With no directive the model just answers a short text.

Faults (opts, also settable at run time via server.opts or POST /_fake/config): fail_rate,
fail_next + fail_status (500 api_error, 529 overloaded_error, 429 rate_limit_error, ...), delay_ms,
hang / hang_next (streams that never end), stream_error_next (an SSE "error" event mid-stream).
Control endpoints (not logged): GET /_fake/requests, POST /_fake/config, POST /_fake/reset.
"""
import argparse
import http.server
import json
import os
import random
import re
import select
import shlex
import sys
import threading
import time
import urllib.parse
import uuid

DEFAULTS = {
    "script": None,        # dict or path of a JSON file, see above
    "api_keys": None,      # list of accepted keys (x-api-key or Bearer); None: any non-empty key
    "model": None,         # model name in answers (default: the requested one)
    "fail_rate": 0.0, "fail_next": 0, "fail_status": 500,
    "delay_ms": 0, "chunk_delay_ms": 0,
    "hang": False, "hang_next": 0, "stream_error_next": 0,
    "log": None, "seed": None,
}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
               500: "api_error", 529: "overloaded_error"}
ERROR_MESSAGES = {529: "Overloaded", 500: "Internal server error", 429: "Number of request tokens has "
                  "exceeded your per-minute rate limit", 401: "invalid x-api-key"}

# -- the script / prompt planner (shared with openai_api.py) ------------------------------------

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


# -- Anthropic specifics -----------------------------------------------------------------------

def _blocks(content):
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return content if isinstance(content, list) else []


def _is_instruction(msg):
    """A user message that carries a real instruction (not tool results, not only system reminders)."""
    if msg.get("role") != "user":
        return False
    blocks = _blocks(msg.get("content"))
    if any(b.get("type") == "tool_result" for b in blocks):
        return False
    return any(b.get("type") == "text" and not b.get("text", "").lstrip().startswith("<system-reminder>")
               for b in blocks)


def conversation_state(body):
    """(instruction text, [(tool_use block, tool_result block)] since it, last tool error)."""
    msgs = body.get("messages") or []
    anchor = max([i for i, m in enumerate(msgs) if _is_instruction(m)], default=-1)
    text = ""
    if anchor >= 0:
        text = "\n".join(b.get("text", "") for b in _blocks(msgs[anchor]["content"]) if b.get("type") == "text")
    uses, history, last_error = {}, [], None
    for m in msgs[anchor + 1:]:
        for b in _blocks(m.get("content")):
            if b.get("type") == "tool_use":
                uses[b.get("id")] = b
            elif b.get("type") == "tool_result":
                history.append((uses.get(b.get("tool_use_id"), {}), b))
                last_error = None
                if b.get("is_error"):
                    c = b.get("content")
                    last_error = c if isinstance(c, str) else json.dumps(c)
    return text, history, last_error


def next_call(calls, history):
    """(index into calls, the call to make now) after replaying the tool history. Like a real model,
    when Claude Code refuses a Write/Edit because the file "has not been read yet" (it exists), the
    fake reads the file and then repeats the call."""
    i, retry = 0, None
    for use, result in history:
        if retry == "read":
            retry = "again"
            continue
        content = result.get("content")
        content = content if isinstance(content, str) else json.dumps(content)
        if retry is None and result.get("is_error") and "has not been read yet" in content \
                and use.get("name") in ("Write", "Edit"):
            retry = "read"
            continue
        retry = None
        i += 1
    if i < len(calls) and calls[i][1] is not None:
        turn, call = calls[i]
        if retry == "read":
            return i, {"name": "Read", "input": {"file_path": call["input"]["file_path"]}}
        return i, call
    return i, calls[i][1] if i < len(calls) else None


def _cwd(body):
    system = body.get("system")
    if isinstance(system, list):
        system = "\n".join(b.get("text", "") for b in system if isinstance(b, dict))
    m = re.search(r"(?:Primary working directory|Working directory):\s*(\S+)", system or "")
    return m.group(1) if m else "/workspace"


def tool_calls(turn, cwd):
    """The Claude Code tool calls ({name, input}) that carry out one script turn."""
    def absolute(p):
        return p if p.startswith("/") else os.path.join(cwd, p)
    if "tool_use" in turn:
        return [turn["tool_use"]]
    if "write" in turn:
        return [{"name": "Write", "input": {"file_path": absolute(turn["write"]["path"]),
                                            "content": turn["write"]["content"]}}]
    if "edit" in turn:
        e = turn["edit"]
        return [{"name": "Read", "input": {"file_path": absolute(e["path"])}},
                {"name": "Edit", "input": {"file_path": absolute(e["path"]), "old_string": e["old"],
                                           "new_string": e["new"], "replace_all": False}}]
    if "bash" in turn:
        return [{"name": "Bash", "input": {"command": turn["bash"], "description": "Run a shell command"}}]
    return []


def tokens_of(obj):
    return max(1, len(json.dumps(obj)) // 4)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-anthropic/1"

    def log_message(self, *args):
        pass

    def _send(self, status, obj, headers=None, ctype="application/json"):
        body = b"" if obj is None else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("request-id", self.request_id)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        if self.entry is not None:
            self.entry["status"] = status

    def _error(self, status, message=None):
        etype = ERROR_TYPES.get(status, "api_error")
        headers = {"retry-after": "1"} if status in (429, 529) else {}
        if status in (500, 529):
            headers["x-should-retry"] = "true"
        self._send(status, {"type": "error", "error": {"type": etype, "message": message or
                   ERROR_MESSAGES.get(status, etype)}, "request_id": self.request_id}, headers)

    def _control(self, path, raw):
        srv = self.server
        if path == "/_fake/requests":
            return self._send(200, srv.requests)
        if path == "/_fake/config" and self.command == "POST":
            srv.opts.update(json.loads(raw or b"{}"))
        elif path == "/_fake/reset" and self.command == "POST":
            with srv.lock:
                del srv.requests[:]
                srv.turn_errors.clear()
        self._send(200, srv.opts)

    def _take(self, name):
        with self.server.lock:
            if self.server.opts.get(name, 0) > 0:
                self.server.opts[name] -= 1
                return True
        return False

    def _handle(self):
        self.entry = None
        self.request_id = "req_fake_" + uuid.uuid4().hex[:20]
        url = urllib.parse.urlsplit(self.path)
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if url.path.startswith("/_fake/"):
            return self._control(url.path, raw)
        srv, opts = self.server, self.server.opts
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", errors="replace")
        self.entry = srv.record({"method": self.command, "path": url.path,
                                 "query": urllib.parse.parse_qs(url.query),
                                 "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
        path = url.path.rstrip("/")
        if path == "" and self.command in ("HEAD", "GET"):
            return self._send(200, None if self.command == "HEAD" else {"ok": True})
        if opts.get("delay_ms"):
            time.sleep(opts["delay_ms"] / 1000.0)
        if self._take("fail_next") or (opts.get("fail_rate") and srv.rng.random() < opts["fail_rate"]):
            return self._error(int(opts.get("fail_status") or 500))
        key = self.headers.get("x-api-key") or ""
        auth = self.headers.get("Authorization") or ""
        if auth.lower().startswith("bearer "):
            key = key or auth[7:].strip()
        if not key:
            return self._error(401, "x-api-key header is required")
        if opts.get("api_keys") and key not in opts["api_keys"]:
            return self._error(401, "invalid x-api-key")
        if path == "/v1/models" and self.command == "GET":
            data = [{"type": "model", "id": m, "display_name": m, "created_at": "2026-01-01T00:00:00Z"}
                    for m in ("claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5")]
            return self._send(200, {"data": data, "has_more": False, "first_id": data[0]["id"],
                                    "last_id": data[-1]["id"]})
        if path == "/v1/messages/count_tokens" and self.command == "POST":
            return self._send(200, {"input_tokens": tokens_of(body)})
        if path == "/v1/messages" and self.command == "POST":
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body.get("model"):
                return self._error(400, "messages: Field required" if isinstance(body, dict) else
                                   "Invalid JSON body")
            return self._messages(body)
        return self._error(404, "Not found")

    def _messages(self, body):
        srv, opts = self.server, self.server.opts
        text, history, last_error = conversation_state(body)
        script = load_script(opts.get("script"))
        plan = script if script else (parse_directives(text) or {"turns": [], "final": None, "fault": {}})
        fault = plan.get("fault") or {}
        if fault.get("delay_ms"):
            time.sleep(fault["delay_ms"] / 1000.0)
        if fault.get("error"):
            return self._error(fault["error"])
        # expand script turns into concrete tool calls (edit = Read + Edit)
        cwd = _cwd(body)
        calls = []  # (turn, call or None)
        for t in plan.get("turns", []):
            tc = tool_calls(t, cwd)
            calls.extend([(t, c) for c in tc] or [(t, None)])
        turn_index, call = next_call(calls, history)
        turn = calls[turn_index][0] if turn_index < len(calls) else {}
        if turn.get("error"):
            key = (turn_index, json.dumps(turn, sort_keys=True))
            with srv.lock:
                seen = srv.turn_errors.get(key, 0)
                srv.turn_errors[key] = seen + 1
            if seen < turn.get("times", 1):
                return self._error(int(turn["error"]))
        if turn.get("delay_ms"):
            time.sleep(turn["delay_ms"] / 1000.0)
        tools = {t.get("name") for t in body.get("tools") or []}
        content = []
        if call and call["name"] in tools:
            if turn.get("text"):
                content.append({"type": "text", "text": turn["text"]})
            content.append({"type": "tool_use", "id": "toolu_fake_%s" % uuid.uuid4().hex[:16],
                            "name": call["name"], "input": call["input"]})
            stop = "tool_use"
        else:
            if call:  # a side request without the scripted tool (e.g. a title or summary)
                final = "OK"
            elif turn.get("text") and turn_index < len(calls):
                final = turn["text"]
            else:
                final = final_text(plan, last_error)
            content.append({"type": "text", "text": final})
            stop = "end_turn"
        message = {"id": "msg_fake_%s" % uuid.uuid4().hex[:20], "type": "message", "role": "assistant",
                   "model": opts.get("model") or body["model"], "content": content, "stop_reason": stop,
                   "stop_sequence": None,
                   "usage": {"input_tokens": tokens_of(body.get("messages")), "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 0, "output_tokens": tokens_of(content)}}
        self.entry["answer"] = {"stop_reason": stop, "content": content}
        hang = fault.get("hang") or turn.get("hang") or opts.get("hang") or self._take("hang_next")
        if not body.get("stream"):
            if hang:
                return self._hang_plain()
            return self._send(200, message)
        self._stream(message, hang)

    # -- SSE ---------------------------------------------------------------------------------
    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _event(self, name, obj):
        self._chunk(("event: %s\ndata: %s\n\n" % (name, json.dumps(obj))).encode())
        if self.server.opts.get("chunk_delay_ms"):
            time.sleep(self.server.opts["chunk_delay_ms"] / 1000.0)

    def _stream(self, message, hang):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("request-id", self.request_id)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.entry["status"] = 200
        start = dict(message, content=[], stop_reason=None, stop_sequence=None,
                     usage=dict(message["usage"], output_tokens=1))
        try:
            self._event("message_start", {"type": "message_start", "message": start})
            self._event("ping", {"type": "ping"})
            if self._take("stream_error_next"):
                self._event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
                return self._chunk(b"")
            if hang:
                self._event("content_block_start", {"type": "content_block_start", "index": 0,
                                                    "content_block": {"type": "text", "text": ""}})
                while True:  # never ends: the client has to give up or be killed
                    self._event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                        "delta": {"type": "text_delta", "text": "."}})
                    time.sleep(1.0)
            for i, block in enumerate(message["content"]):
                if block["type"] == "text":
                    self._event("content_block_start", {"type": "content_block_start", "index": i,
                                                        "content_block": {"type": "text", "text": ""}})
                    t = block["text"]
                    for j in range(0, len(t), 24):
                        self._event("content_block_delta", {"type": "content_block_delta", "index": i,
                                                            "delta": {"type": "text_delta", "text": t[j:j + 24]}})
                else:
                    self._event("content_block_start", {"type": "content_block_start", "index": i,
                                                        "content_block": dict(block, input={})})
                    js = json.dumps(block["input"])
                    half = len(js) // 2
                    for part in (js[:half], js[half:]):
                        delta = {"type": "input_json_delta", "partial_json": part}
                        self._event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta})
                self._event("content_block_stop", {"type": "content_block_stop", "index": i})
            self._event("message_delta", {"type": "message_delta",
                                          "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                          "usage": {"output_tokens": message["usage"]["output_tokens"]}})
            self._event("message_stop", {"type": "message_stop"})
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

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

    do_GET = do_POST = do_HEAD = _handle


class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024  # listen backlog: must be set before the constructor runs listen()
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, opts, handler=Handler, defaults=DEFAULTS):
        self.opts = dict(defaults)
        self.opts.update(opts)
        self.lock = threading.Lock()
        self.requests = []
        self.turn_errors = {}
        self.rng = random.Random(self.opts.get("seed"))
        super().__init__(addr, handler)

    def record(self, entry):
        with self.lock:
            entry = dict(seq=len(self.requests) + 1, ts=time.time(), **entry)
            self.requests.append(entry)
            if self.opts.get("log"):
                with open(self.opts["log"], "a") as f:
                    f.write(json.dumps(entry) + "\n")
        return entry

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.server_address[1]

    def close(self):
        self.shutdown()
        self.server_close()


def start(port=0, host="127.0.0.1", **opts):
    """Starts the server in a daemon thread. Returns (server, thread, port)."""
    server = Server((host, port), opts)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, thread, server.server_address[1]


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


def main():
    a = common_args(argparse.ArgumentParser(description="fake Anthropic Messages API")).parse_args()
    opts = {k: v for k, v in vars(a).items() if k not in ("port", "host")}
    server, thread, port = start(port=a.port, host=a.host, **opts)
    print("anthropic_api listening on http://%s:%d" % (a.host, port), flush=True)
    try:
        thread.join()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
