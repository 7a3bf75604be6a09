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

The planner, the request log, the control endpoints, the faults and the key check are shared with
openai_api.py in model_api.py.
"""
import json
import os
import re
import sys
import time
import uuid

try:
    from . import model_api as base
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import model_api as base

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
               500: "api_error", 529: "overloaded_error"}
ERROR_MESSAGES = {529: "Overloaded", 500: "Internal server error", 429: "Number of request tokens has "
                  "exceeded your per-minute rate limit", 401: "invalid x-api-key"}


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


class Handler(base.Handler):
    server_version = "fake-anthropic/1"
    request_id_prefix, request_id_hex = "req_fake_", 20
    missing_key_message = "x-api-key header is required"
    wrong_key_message = "invalid x-api-key"

    def _api_key(self):
        return self.headers.get("x-api-key") or super()._api_key()

    def _error(self, status, message=None):
        etype = ERROR_TYPES.get(status, "api_error")
        headers = {"retry-after": "1"} if status in (429, 529) else {}
        if status in (500, 529):
            headers["x-should-retry"] = "true"
        self._send(status, {"type": "error", "error": {"type": etype, "message": message or
                   ERROR_MESSAGES.get(status, etype)}, "request_id": self.request_id}, headers)

    def _route(self, url, path, body):
        if path == "/v1/models" and self.command == "GET":
            data = [{"type": "model", "id": m, "display_name": m, "created_at": "2026-01-01T00:00:00Z"}
                    for m in ("claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5")]
            return self._send(200, {"data": data, "has_more": False, "first_id": data[0]["id"],
                                    "last_id": data[-1]["id"]})
        if path == "/v1/messages/count_tokens" and self.command == "POST":
            return self._send(200, {"input_tokens": base.tokens_of(body)})
        if path == "/v1/messages" and self.command == "POST":
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body.get("model"):
                return self._error(400, "messages: Field required" if isinstance(body, dict) else
                                   "Invalid JSON body")
            return self._messages(body)
        return self._error(404, "Not found")

    def _messages(self, body):
        opts = self.server.opts
        text, history, last_error = conversation_state(body)
        plan, fault = self._plan(text)
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
        status = self._turn_error(turn_index, turn)
        if status is not None:
            return self._error(status)
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
                final = base.final_text(plan, last_error)
            content.append({"type": "text", "text": final})
            stop = "end_turn"
        message = {"id": "msg_fake_%s" % uuid.uuid4().hex[:20], "type": "message", "role": "assistant",
                   "model": opts.get("model") or body["model"], "content": content, "stop_reason": stop,
                   "stop_sequence": None,
                   "usage": {"input_tokens": base.tokens_of(body.get("messages")), "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 0, "output_tokens": base.tokens_of(content)}}
        self.entry["answer"] = {"stop_reason": stop, "content": content}
        self._answer(body, message, fault, turn)

    # -- SSE ---------------------------------------------------------------------------------
    def _stream(self, message, hang):
        self._start_sse()
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


def start(port=0, host="127.0.0.1", **opts):
    """Starts the server in a daemon thread. Returns (server, thread, port)."""
    return base.start(Handler, port, host, **opts)


def main():
    base.main("anthropic_api", "fake Anthropic Messages API", start)


if __name__ == "__main__":
    sys.exit(main())
