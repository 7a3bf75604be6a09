#!/usr/bin/env bash
# Proves that the real Claude Code and Codex CLIs (tools/agents, pinned by `make agents`) work
# against the fakes in this directory INSIDE bubblewrap, the way the engine runs them:
#   - a working copy cloned over smart HTTP from git_http.py (token through a credential helper),
#     bound read-write at /workspace; the tools dir bound read-only at /opt/agents;
#   - unprivileged uid 1000 in a new user namespace, every capability dropped, own pid/ipc/uts
#     namespaces, private /tmp, HOME on a tmpfs, a minimal /etc, network shared (fakes on 127.0.0.1);
#   - the prompt on stdin (never in argv); JSONL events on stdout.
# For each CLI it checks: the scripted edits (new file, edited file, deleted file, mode change,
# binary file) landed in the repo; the event stream has the documented shapes; the fake saw the
# API key; no connection left 127.0.0.1 (strace, when installed); killing bwrap kills the agent and
# its children (cancel); and the result can be committed, pushed and opened as a pull request
# through git_http.py + github_api.py.
#
#   tests/fakes/verify_agents.sh [claude] [codex]     (default: both; KEEP=1 keeps the temp dir)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=/usr/bin/python3
AGENTS=$ROOT/tools/agents
WANT=("$@")
[ ${#WANT[@]} -gt 0 ] || WANT=(claude codex)

"$ROOT/tools/agents.sh" >/dev/null
TMP=$(mktemp -d /tmp/verify-agents.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
FAILS=0
ok() { echo "ok   - $*"; }
bad() { echo "FAIL - $*"; FAILS=$((FAILS + 1)); }
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

# -- fakes ------------------------------------------------------------------------------------
GH_TOKEN=ghs_verifyTOKEN123
AKEY=sk-ant-verify-key
OKEY=sk-openai-verify-key
start_fake() {  # name args... -> sets PORT
  local name=$1; shift
  "$PY" "$HERE/$name.py" --port 0 --log "$TMP/$name.jsonl" "$@" >"$TMP/$name.out" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do
    PORT=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$TMP/$name.out")
    [ -n "$PORT" ] && return 0
    sleep 0.05
  done
  echo "could not start $name: $(cat "$TMP/$name.out")" >&2; exit 1
}
mkdir -p "$TMP/repos"
start_fake git_http --root "$TMP/repos" --require-token "$GH_TOKEN"; GIT_PORT=$PORT
start_fake github_api --root "$TMP/repos" --token "$GH_TOKEN:octo:write"; GH_PORT=$PORT
start_fake anthropic_api --api-key "$AKEY"; ANTHROPIC_PORT=$PORT
start_fake openai_api --api-key "$OKEY"; OPENAI_PORT=$PORT
PYTHONPATH=$HERE "$PY" -c '
import sys, git_http
git_http.make_repo(sys.argv[1], "octo/demo", {
    "README.md": "# Demo\nA demo repository.\n",
    "old.txt": "to be deleted\n",
    "tool.sh": "#!/bin/sh\necho tool\n",
}, binary=True, executable=True)' "$TMP/repos"

# git gets the token from the environment through a credential helper: never in a URL or argv.
git_auth() {
  GIT_TOKEN=$GH_TOKEN GIT_TERMINAL_PROMPT=0 GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null \
  GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=credential.helper \
  GIT_CONFIG_VALUE_0='!f() { echo username=x-access-token; echo "password=$GIT_TOKEN"; }; f' git "$@"
}

# -- the sandbox ------------------------------------------------------------------------------
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nagent:x:1000:1000:agent:/home/agent:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >"$TMP/passwd"
printf 'root:x:0:\nagent:x:1000:\nnogroup:x:65534:\n' >"$TMP/group"
sandbox_argv() {  # workdir -> SBX array (bwrap options; append --setenv ... and the command)
  SBX=(bwrap --ro-bind /usr /usr --symlink usr/lib /lib --symlink usr/lib64 /lib64
       --symlink usr/bin /bin --symlink usr/sbin /sbin)
  # only what programs need from /etc: uid 1000 inside maps to the caller (root) outside, so a
  # root-owned 0600 file bound into the sandbox (e.g. /etc/shadow, /etc/ssl/private) would be readable.
  local f
  for f in alternatives ssl/certs ssl/openssl.cnf ca-certificates ca-certificates.conf hosts resolv.conf \
           nsswitch.conf host.conf gai.conf localtime timezone profile profile.d bash.bashrc \
           ld.so.cache ld.so.conf ld.so.conf.d; do
    [ -e "/etc/$f" ] && SBX+=(--ro-bind "/etc/$f" "/etc/$f")
  done
  SBX+=(--ro-bind "$TMP/passwd" /etc/passwd --ro-bind "$TMP/group" /etc/group
        --proc /proc --dev /dev --tmpfs /tmp --tmpfs /home --dir /home/agent
        --ro-bind "$AGENTS" /opt/agents --bind "$1" /workspace --chdir /workspace
        --unshare-user --uid 1000 --gid 1000 --unshare-pid --unshare-ipc --unshare-uts --hostname sandbox
        --die-with-parent --cap-drop ALL --new-session
        --clearenv --setenv HOME /home/agent --setenv USER agent --setenv LANG C.UTF-8 --setenv SHELL /bin/bash
        --setenv PATH /opt/agents/node_modules/.bin:/usr/local/bin:/usr/bin:/bin)
}

# -- the agents, exactly as the engine should run them ---------------------------------------
agent_argv() {  # agent -> CMD array (bwrap env options + command)
  case $1 in
    claude)
      CMD=(--setenv ANTHROPIC_BASE_URL "http://127.0.0.1:$ANTHROPIC_PORT" --setenv ANTHROPIC_API_KEY "$AKEY"
           --setenv DISABLE_TELEMETRY 1 --setenv DISABLE_AUTOUPDATER 1
           --setenv CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC 1
           claude -p --output-format stream-json --verbose --dangerously-skip-permissions) ;;
    codex)
      CMD=(--setenv OPENAI_API_KEY "$OKEY"
           codex exec --json --skip-git-repo-check --dangerously-bypass-approvals-and-sandbox
           -c analytics.enabled=false -c features.plugins=false
           -c model_provider=aicode
           -c "model_providers.aicode={name=\"aicode\",base_url=\"http://127.0.0.1:$OPENAI_PORT/v1\",env_key=\"OPENAI_API_KEY\",wire_api=\"responses\",supports_websockets=false}"
           -m gpt-5.5 -) ;;
  esac
}

PROMPT_LINES=(
  'Please make these changes. Shell characters must arrive verbatim: $(whoami) `id` "dq" '"'sq'"' ; | & > <'
  'write hello.txt: hello from AGENT'
  'edit README.md: A demo repository. => A demo repository, edited by AGENT.'
  'bash: rm old.txt && chmod +x tool.sh && printf "\001\002\377" > data.bin && echo "$((6*7))" > answer.txt'
  'reply: Finished the AGENT changes.'
)

check_events() {  # agent events.jsonl
  "$PY" - "$@" <<'EOF'
import json, sys
agent, path = sys.argv[1], sys.argv[2]
ev = [json.loads(l) for l in open(path) if l.strip()]
problems = []
def need(cond, what):
    if not cond:
        problems.append(what)
if agent == "claude":
    need(ev and ev[0].get("type") == "system" and ev[0].get("subtype") == "init", "first line is system/init")
    uses = [c["name"] for e in ev if e["type"] == "assistant" for c in e["message"]["content"] if c["type"] == "tool_use"]
    need(uses == ["Write", "Read", "Edit", "Bash"], "tool_use sequence Write, Read, Edit, Bash (got %s)" % uses)
    results = [c for e in ev if e["type"] == "user" for c in e["message"]["content"] if c.get("type") == "tool_result"]
    need(len(results) == 4 and not any(r.get("is_error") for r in results), "4 tool_results without is_error")
    res = ev[-1]
    need(res.get("type") == "result" and res.get("is_error") is False, "last line is result, is_error false")
    need(res.get("result") == "Finished the claude changes.", "final answer text")
    need(isinstance(res.get("total_cost_usd"), (int, float)) and res["usage"]["input_tokens"] > 0, "usage + cost")
else:
    need(ev and ev[0].get("type") == "thread.started", "first line is thread.started")
    cmds = [e["item"] for e in ev if e["type"] == "item.completed" and e["item"]["type"] == "command_execution"]
    need(len(cmds) == 3 and all(c["exit_code"] == 0 for c in cmds), "3 command_execution items with exit 0")
    msgs = [e["item"]["text"] for e in ev if e["type"] == "item.completed" and e["item"]["type"] == "agent_message"]
    need(msgs[-1:] == ["Finished the codex changes."], "final agent_message")
    need(not [e for e in ev if e["type"] in ("error", "turn.failed")], "no error events")
    need(ev[-1].get("type") == "turn.completed" and ev[-1]["usage"]["input_tokens"] > 0, "turn.completed with usage")
print("; ".join(problems))
sys.exit(1 if problems else 0)
EOF
}

check_workspace() {  # agent workdir
  local w=$2 st
  st=$(git -C "$w" status --porcelain | sort | tr '\n' '|')
  [ "$st" = " D old.txt| M README.md| M tool.sh|?? answer.txt|?? data.bin|?? hello.txt|" ] || {
    echo "git status: $st"; return 1; }
  [ "$(cat "$w/hello.txt")" = "hello from $1" ] || { echo "hello.txt: $(cat "$w/hello.txt")"; return 1; }
  grep -q "edited by $1" "$w/README.md" || { echo "README.md not edited"; return 1; }
  [ -x "$w/tool.sh" ] && [ "$(cat "$w/answer.txt")" = 42 ] || { echo "tool.sh/answer.txt wrong"; return 1; }
  [ "$(od -An -tx1 "$w/data.bin" | tr -d ' \n')" = 0102ff ] || { echo "data.bin wrong"; return 1; }
}

check_fake_log() {  # agent  (the API key arrived; the prompt arrived verbatim)
  "$PY" - "$1" "$TMP" "$AKEY" "$OKEY" <<'EOF'
import json, sys
agent, tmp, akey, okey = sys.argv[1:5]
log = [json.loads(l) for l in open("%s/%s.jsonl" % (tmp, "anthropic_api" if agent == "claude" else "openai_api"))]
posts = [r for r in log if r["method"] == "POST"]
if agent == "claude":
    keyed = all(r["headers"].get("x-api-key") == akey for r in posts)
else:
    keyed = all(r["headers"].get("authorization") == "Bearer " + okey for r in posts)
want = "Shell characters must arrive verbatim: $(whoami) `id` \"dq\" 'sq' ; | & > <"
def strings(o):
    if isinstance(o, str):
        yield o
    elif isinstance(o, dict):
        for v in o.values():
            yield from strings(v)
    elif isinstance(o, list):
        for v in o:
            yield from strings(v)
seen = any(want in s for r in posts for s in strings(r["body"]))
print("%d model requests, key on all: %s, prompt verbatim: %s" % (len(posts), keyed, seen))
sys.exit(0 if posts and keyed and seen else 1)
EOF
}

descendants() {  # pid -> "pid:starttime" of the pid and all its descendants
  "$PY" - "$1" <<'EOF'
import os, sys
kids, start = {}, {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            f = open("/proc/%s/stat" % p).read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(f[1]), []).append(int(p))
        start[int(p)] = f[19]
todo, out = [int(sys.argv[1])], []
while todo:
    p = todo.pop()
    out.append("%d:%s" % (p, start.get(p, "?")))
    todo.extend(kids.get(p, []))
print(" ".join(out))
EOF
}

alive() {  # "pid:starttime"... -> prints the ones still running (not zombies)
  local e pid st
  for e in "$@"; do
    pid=${e%%:*}
    [ -r "/proc/$pid/stat" ] || continue
    st=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
    set -- $st
    [ "$1" != Z ] && [ "${20}" = "${e#*:}" ] && echo -n "$pid "
  done
  true
}

for agent in "${WANT[@]}"; do
  echo "== $agent"
  work=$TMP/work-$agent
  git_auth clone -q "http://127.0.0.1:$GIT_PORT/octo/demo.git" "$work"
  git -C "$work" config --get remote.origin.url | grep -q "$GH_TOKEN" && bad "token in remote url"
  sandbox_argv "$work"
  agent_argv "$agent"

  # 0. what the sandbox looks like from inside (once)
  if [ "$agent" = "${WANT[0]}" ]; then
    probe=$("${SBX[@]}" /bin/bash -c 'echo "uid=$(id -u) gid=$(id -g) caps=$(grep CapEff /proc/self/status | cut -f2)"
      echo "pid1=$(cat /proc/1/comm) host=$(hostname) procs=$(ls /proc | grep -c "^[0-9]")"
      touch /usr/x 2>/dev/null && echo usr-writable; touch /opt/agents/x 2>/dev/null && echo agents-writable
      touch /workspace/.probe && rm /workspace/.probe && echo workspace-writable
      [ -e /etc/shadow ] && echo shadow-visible; [ -e /root ] && echo root-visible; echo home=$HOME' 2>&1 | tr '\n' ' ')
    echo "     sandbox: $probe"
    case $probe in
      *"uid=1000 gid=1000 caps=0000000000000000"*workspace-writable*) case $probe in
         *usr-writable*|*agents-writable*|*shadow-visible*) bad "sandbox probe: $probe" ;;
         *) ok "sandbox: uid 1000, no capabilities, /usr and /opt/agents read-only, /workspace writable" ;; esac ;;
      *) bad "sandbox probe: $probe" ;;
    esac
  fi

  # 1. the scripted edit
  printf '%s\n' "${PROMPT_LINES[@]}" | sed "s/AGENT/$agent/g" >"$TMP/prompt-$agent.txt"
  t0=$(date +%s%N)
  set +e
  "${SBX[@]}" "${CMD[@]}" <"$TMP/prompt-$agent.txt" >"$TMP/events-$agent.jsonl" 2>"$TMP/stderr-$agent.txt"
  rc=$?
  set -e
  took=$(ms "$t0")
  [ $rc -eq 0 ] && ok "$agent exited 0 in ${took} ms" || bad "$agent exited $rc: $(tail -c 600 "$TMP/stderr-$agent.txt")"
  why=$(check_workspace "$agent" "$work") && ok "$agent made the scripted edits (new, edited, deleted, chmod, binary)" \
    || bad "$agent edits: $why"
  why=$(check_events "$agent" "$TMP/events-$agent.jsonl") && ok "$agent event stream has the documented shapes" \
    || bad "$agent events: $why"
  why=$(check_fake_log "$agent") && ok "$agent: $why" || bad "$agent fake log: $why"
  [ -s "$TMP/stderr-$agent.txt" ] && echo "     stderr: $(head -c 300 "$TMP/stderr-$agent.txt" | tr '\n' ' ')"

  # 2. commit, push with the token from a credential helper, open the pull request, and again
  git -C "$work" add -A
  git -C "$work" -c user.name=aicode-bot -c user.email=bot@aicode.invalid commit -qm "aicode: $agent run"
  if git_auth -C "$work" push -q origin "HEAD:refs/heads/aicode/verify-$agent" 2>"$TMP/push-$agent.txt"; then
    pr() { curl -s -o "$TMP/pr-$agent.json" -w '%{http_code}' -X POST -H "Authorization: Bearer $GH_TOKEN" \
             -H 'Accept: application/vnd.github+json' -H 'User-Agent: aicode-verify' \
             "http://127.0.0.1:$GH_PORT/repos/octo/demo/pulls" \
             -d "{\"title\":\"aicode: $agent\",\"head\":\"octo:aicode/verify-$agent\",\"base\":\"main\",\"body\":\"verify\"}"; }
    c1=$(pr); c2=$(pr)
    remote=$(PYTHONPATH=$HERE "$PY" -c '
import sys, git_http
r, b = sys.argv[1], "aicode/verify-" + sys.argv[2]
t = git_http.tree(r, "octo/demo", b)
print(git_http.read_file(r, "octo/demo", b, "hello.txt").decode().strip(), "old.txt" in t, t["tool.sh"][0], t["data.bin"][0])' \
      "$TMP/repos" "$agent")
    if [ "$c1" = 201 ] && [ "$c2" = 422 ] && grep -q 'already exists' "$TMP/pr-$agent.json" \
       && [ "$remote" = "hello from $agent False 100755 100644" ]; then
      ok "$agent result pushed to aicode/verify-$agent, PR 201, second PR 422 'already exists'"
    else
      bad "$agent PR flow: create=$c1 again=$c2 remote='$remote' $(cat "$TMP/pr-$agent.json")"
    fi
  else
    bad "$agent push: $(cat "$TMP/push-$agent.txt")"
  fi

  # 3. no traffic except to 127.0.0.1 (no DNS either)
  if command -v strace >/dev/null; then
    git -C "$work" reset -q --hard HEAD~1 && git -C "$work" clean -qfd
    printf 'write net.txt: x\n' | strace -f -qq -e trace=connect,sendto,sendmsg,sendmmsg -o "$TMP/strace-$agent.txt" \
      "${SBX[@]}" "${CMD[@]}" >/dev/null 2>&1 || true
    outside=$(grep -E 'AF_INET6?' "$TMP/strace-$agent.txt" | grep -vE 'inet_addr\("127\.0\.0\.1"\)|inet_pton\(AF_INET6, "::1"' || true)
    dns=$(grep -c 'htons(53)' "$TMP/strace-$agent.txt" || true)
    [ -z "$outside" ] && [ "$dns" = 0 ] && [ -f "$work/net.txt" ] && ok "$agent: no connection except 127.0.0.1, no DNS (strace)" \
      || bad "$agent network: dns=$dns $(echo "$outside" | head -3)"
  fi

  # 4. cancel: kill -9 bwrap while the agent runs a long command; everything inside must go
  marker=aicode-cancel-$agent-$$
  printf 'bash: exec -a %s sleep 600\n' "$marker" >"$TMP/cancel-prompt-$agent.txt"
  "${SBX[@]}" "${CMD[@]}" <"$TMP/cancel-prompt-$agent.txt" >"$TMP/cancel-$agent.jsonl" 2>&1 &
  bpid=$!
  found=
  for _ in $(seq 150); do
    grep -qsa "$marker" /proc/[0-9]*/cmdline && { found=1; break; }
    sleep 0.2
  done
  tree=$(descendants "$bpid")
  t0=$(date +%s%N)
  kill -KILL "$bpid"
  wait "$bpid" 2>/dev/null || true
  left=
  for _ in $(seq 50); do
    left=$(alive ${tree#* })
    [ -z "$left" ] && break
    sleep 0.1
  done
  if [ -n "$found" ] && [ -z "$left" ]; then
    ok "$agent cancel: kill -9 of bwrap ended all $(echo $tree | wc -w) processes (agent, shell, sleep) in $(ms "$t0") ms"
  else
    bad "$agent cancel: long command seen=${found:-no}, still alive: ${left:-none}"
  fi
done

echo "== node_modules: $(du -sh "$AGENTS/node_modules" | cut -f1)"
for agent in "${WANT[@]}"; do
  agent_argv "$agent"
  echo "== $agent command line (inside the sandbox; the prompt on stdin):"
  printf '   '; printf '%q ' "${CMD[@]}"; echo
done
[ $FAILS -eq 0 ] && echo "ALL OK" || echo "$FAILS FAILED"
exit $((FAILS > 0))
