#!/usr/bin/python3
"""A fake OpenAI Responses API that scripts a coding agent (Codex CLI) through shell tool calls.

    python3 tests/fakes/openai_api.py --port 18200 [--script turns.json] [--api-key K]
        [--fail-rate 0.1] [--fail-next 2 --fail-status 500] [--delay-ms 100] [--hang] [--log o.jsonl]

    from openai_api import start
    server, thread, port = start(script={"turns": [{"bash": "echo hi > hello.txt"}]})
    # codex: -c model_provider=fake -c 'model_providers.fake={base_url="http://127.0.0.1:<port>/v1",...}'
    server.requests     # method, path, query, headers (authorization included), body (parsed JSON), status

Endpoints: POST /v1/responses: SSE when "stream": true (response.created, response.in_progress,
response.output_item.added, response.content_part.added, response.output_text.delta,
response.output_text.done, response.content_part.done / response.function_call_arguments.delta,
response.function_call_arguments.done, response.output_item.done, response.completed with usage),
else one JSON response object. GET /v1/models (and /v1/models/{id}), HEAD / and GET / (200).
A WebSocket upgrade on GET /v1/responses is refused with 426 (Codex then uses plain HTTP).

Turns are scripted exactly as in anthropic_api.py (same script format and prompt directives:
write / edit / bash / reply / fake-error / fake-delay / fake-hang). The turn index is the number of
function_call_output items after the latest user message; each write/edit/bash turn becomes one
`exec_command` function call ({"cmd": "<shell command>"}, Codex's shell tool), and a raw call can be
scripted with {"function_call": {"name": ..., "arguments": {...}}}. Then a final assistant message.

Faults: fail_rate, fail_next + fail_status (500 server_error, 429 rate_limit_exceeded, 401, 400 ...),
delay_ms, hang / hang_next (a stream that never ends), stream_error_next (response.failed mid-stream).
Control endpoints (not logged): GET /_fake/requests, POST /_fake/config, POST /_fake/reset.
The planner, the request log, the control endpoints, the faults and the key check are model_api.py's.
"""
import json
import os
import sys
import time
import uuid

try:
    from . import model_api as base
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import model_api as base

SHELL_TOOL = "exec_command"
ERRORS = {  # status -> (type, code, message), as the OpenAI API answers them
    400: ("invalid_request_error", None, "Invalid request"),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    404: ("invalid_request_error", None, "Not found"),
    429: ("rate_limit_exceeded", "rate_limit_exceeded", "Rate limit reached. Please try again in 1s."),
    500: ("server_error", "server_error", "The server had an error while processing your request."),
    503: ("server_error", "server_is_overloaded", "The engine is currently overloaded, please try again later."),
}


def _text_of(content):
    if isinstance(content, str):
        return content
    return "\n".join(c.get("text", "") for c in content or [] if isinstance(c, dict))


def conversation_state(body):
    """(instruction text, function_call_outputs since it, last output) of a Responses request."""
    items = body.get("input")
    if isinstance(items, str):
        return items, 0, None
    items = items or []
    anchor = max([i for i, it in enumerate(items) if it.get("type", "message") == "message"
                  and it.get("role") == "user" and not _text_of(it.get("content")).lstrip().startswith("<")],
                 default=-1)
    text = _text_of(items[anchor].get("content")) if anchor >= 0 else ""
    outputs = [it for it in items[anchor + 1:] if it.get("type") == "function_call_output"]
    return text, len(outputs), None


def function_call(turn):
    if "function_call" in turn:
        fc = turn["function_call"]
        args = fc.get("arguments", {})
        return fc["name"], args if isinstance(args, str) else json.dumps(args)
    cmd = base.shell_for(turn)
    return (SHELL_TOOL, json.dumps({"cmd": cmd})) if cmd else None


class Handler(base.Handler):
    server_version = "fake-openai/1"
    request_id_prefix, request_id_hex = "req_", 24
    stream_id_header = "x-request-id"
    missing_key_message = ("You didn't provide an API key. You need to provide your API key in an Authorization "
                           "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
    wrong_key_message = "Incorrect API key provided: {key_prefix}***."

    def _error(self, status, message=None):
        etype, code, msg = ERRORS.get(status, ("server_error", None, "error"))
        headers = {"retry-after": "1"} if status in (429, 503) else {}
        self._send(status, {"error": {"message": message or msg, "type": etype, "param": None, "code": code}},
                   headers)

    def _before_checks(self, path):
        if path.endswith("/responses") and self.command == "GET":  # Responses over WebSocket: not offered
            self._send(426, {"error": {"message": "WebSocket not supported by this server",
                                       "type": "invalid_request_error", "param": None, "code": None}})
            return True
        return False

    def _route(self, url, path, body):
        if path.endswith("/models") and self.command == "GET":
            data = [{"id": m, "object": "model", "created": 1767225600, "owned_by": "openai"}
                    for m in ("gpt-5.5", "gpt-5-codex", "gpt-4.1")]
            return self._send(200, {"object": "list", "data": data})
        if "/models/" in path and self.command == "GET":
            return self._send(200, {"id": path.rsplit("/", 1)[-1], "object": "model", "created": 1767225600,
                                    "owned_by": "openai"})
        if path.endswith("/responses") and self.command == "POST":
            lite = isinstance(body, dict) and "tools" not in body and any(
                isinstance(it, dict) and it.get("type") == "additional_tools" for it in body.get("input") or [])
            if self.headers.get("x-openai-internal-codex-responses-lite") or lite:
                # Codex's internal "responses-lite" format (its newest default models, code-mode `exec`
                # tool): not the public Responses API. Fail loudly instead of answering nonsense.
                return self._error(400, "fake openai_api: Codex sent an internal responses-lite request "
                                   "(model %s); run codex with a model that uses the public Responses API, "
                                   "e.g. -m gpt-5.5" % (body or {}).get("model"))
            if not isinstance(body, dict) or "input" not in body or not body.get("model"):
                return self._error(400, "Missing required parameter: 'input'." if isinstance(body, dict)
                                   else "We could not parse the JSON body of your request.")
            return self._responses(body)
        return self._error(404, "Invalid URL (%s %s)" % (self.command, url.path))

    def _responses(self, body):
        opts = self.server.opts
        text, turn_index, _ = conversation_state(body)
        plan, fault = self._plan(text)
        if fault.get("error"):
            return self._error(fault["error"])
        turns = plan.get("turns", [])
        turn = turns[turn_index] if turn_index < len(turns) else {}
        status = self._turn_error(turn_index, turn)
        if status is not None:
            return self._error(status)
        tools = {t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)}
        fc = function_call(turn) if turn else None
        output = []
        if fc and fc[0] in tools:
            if turn.get("text"):
                output.append(self._message_item(turn["text"]))
            output.append({"id": "fc_%s" % uuid.uuid4().hex[:24], "type": "function_call", "status": "completed",
                           "call_id": "call_%s" % uuid.uuid4().hex[:24], "name": fc[0], "arguments": fc[1]})
        else:
            if fc:
                final = "OK"  # a side request without the shell tool
            elif turn.get("text"):
                final = turn["text"]
            else:
                final = base.final_text(plan)
            output.append(self._message_item(final))
        in_tok = base.tokens_of(body.get("input"))
        out_tok = base.tokens_of(output)
        resp = {"id": "resp_%s" % uuid.uuid4().hex[:24], "object": "response", "created_at": int(time.time()),
                "status": "completed", "error": None, "incomplete_details": None,
                "instructions": body.get("instructions"), "model": opts.get("model") or body["model"],
                "output": output, "parallel_tool_calls": body.get("parallel_tool_calls", True),
                "previous_response_id": body.get("previous_response_id"), "store": body.get("store", False),
                "tool_choice": body.get("tool_choice", "auto"), "tools": [], "text": {"format": {"type": "text"}},
                "usage": {"input_tokens": in_tok, "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens": out_tok, "output_tokens_details": {"reasoning_tokens": 0},
                          "total_tokens": in_tok + out_tok}}
        self.entry["answer"] = {"output": output}
        self._answer(body, resp, fault, turn)

    @staticmethod
    def _message_item(text):
        return {"id": "msg_%s" % uuid.uuid4().hex[:24], "type": "message", "status": "completed",
                "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}

    def _stream(self, resp, hang):
        self._start_sse()
        seq = [0]

        def ev(obj):
            obj["sequence_number"] = seq[0]
            seq[0] += 1
            self._event(obj["type"], obj)

        pending = dict(resp, status="in_progress", output=[], usage=None)
        try:
            ev({"type": "response.created", "response": pending})
            ev({"type": "response.in_progress", "response": pending})
            if self._take("stream_error_next"):
                failed = dict(pending, status="failed", error={"code": "server_error",
                              "message": "The server had an error while processing your request."})
                ev({"type": "response.failed", "response": failed})
                return self._chunk(b"")
            if hang:
                item = dict(self._message_item(""), status="in_progress", content=[])
                ev({"type": "response.output_item.added", "output_index": 0, "item": item})
                while True:  # never ends: the client has to give up or be killed
                    ev({"type": "response.output_text.delta", "item_id": item["id"], "output_index": 0,
                        "content_index": 0, "delta": "."})
                    time.sleep(1.0)
            for i, item in enumerate(resp["output"]):
                if item["type"] == "message":
                    text = item["content"][0]["text"]
                    ev({"type": "response.output_item.added", "output_index": i,
                        "item": dict(item, status="in_progress", content=[])})
                    part = {"type": "output_text", "text": "", "annotations": []}
                    ev({"type": "response.content_part.added", "item_id": item["id"], "output_index": i,
                        "content_index": 0, "part": part})
                    for j in range(0, len(text), 24):
                        ev({"type": "response.output_text.delta", "item_id": item["id"], "output_index": i,
                            "content_index": 0, "delta": text[j:j + 24]})
                    ev({"type": "response.output_text.done", "item_id": item["id"], "output_index": i,
                        "content_index": 0, "text": text})
                    ev({"type": "response.content_part.done", "item_id": item["id"], "output_index": i,
                        "content_index": 0, "part": dict(part, text=text)})
                else:
                    args = item["arguments"]
                    ev({"type": "response.output_item.added", "output_index": i,
                        "item": dict(item, status="in_progress", arguments="")})
                    half = len(args) // 2
                    for part in (args[:half], args[half:]):
                        ev({"type": "response.function_call_arguments.delta", "item_id": item["id"],
                            "output_index": i, "delta": part})
                    ev({"type": "response.function_call_arguments.done", "item_id": item["id"],
                        "output_index": i, "arguments": args})
                ev({"type": "response.output_item.done", "output_index": i, "item": item})
            ev({"type": "response.completed", "response": resp})
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def start(port=0, host="127.0.0.1", **opts):
    """Starts the server in a daemon thread. Returns (server, thread, port)."""
    return base.start(Handler, port, host, **opts)


def main():
    base.main("openai_api", "fake OpenAI Responses API", start)


if __name__ == "__main__":
    sys.exit(main())
