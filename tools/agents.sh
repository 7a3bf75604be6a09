#!/usr/bin/env bash
# Installs the coding-agent CLIs (Claude Code, Codex) at the exact versions pinned in
# tools/agents/package.json + package-lock.json into tools/agents/node_modules (`make agents`).
# Idempotent: does nothing when the installed versions already match the pins and the native
# binaries are in place. The engine binds tools/agents read-only into the sandbox.
#   tools/agents.sh           install if needed, then print the installed versions
#   tools/agents.sh --check   exit 1 (and say why) when not installed as pinned; never installs
set -euo pipefail
cd "$(dirname "$0")/agents"

# Prints nothing and succeeds when every pinned dependency is installed at its pinned version and
# the native binaries exist (claude.exe is a small placeholder until its postinstall copies the
# native binary over it); otherwise prints the first problem.
installed_ok() {
  node -e '
    const fs = require("fs");
    const pins = require("./package.json").dependencies;
    for (const [name, want] of Object.entries(pins)) {
      let have = null;
      try { have = JSON.parse(fs.readFileSync("node_modules/" + name + "/package.json")).version; } catch (e) {}
      if (have !== want) { console.log(name + ": installed " + have + ", pinned " + want); process.exit(1); }
    }
    const bins = {
      "node_modules/@anthropic-ai/claude-code/bin/claude.exe": 10e6,
      "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex": 10e6,
    };
    for (const [p, min] of Object.entries(bins)) {
      if (process.arch === "x64" && !(fs.existsSync(p) && fs.statSync(p).size > min)) {
        console.log(p + ": native binary missing"); process.exit(1);
      }
    }'
}

command -v node >/dev/null && command -v npm >/dev/null || {
  echo "agents: node and npm are required (Debian: apt-get install nodejs npm)" >&2; exit 1; }

if [ "${1:-}" = --check ]; then
  installed_ok
  exit
fi

# One installer at a time (make -j, parallel test runs).
exec 9>.install.lock
flock 9

if why=$(installed_ok); then
  :
else
  echo "agents: $why; installing with npm ci" >&2
  start=$(date +%s)
  # npm ci removes node_modules first and installs exactly the lock file. allowScripts in
  # package.json lets Claude Code's postinstall copy its native binary into bin/claude.exe.
  npm ci --no-audit --no-fund --loglevel=error >&2
  installed_ok >&2 || { echo "agents: install did not produce the pinned versions" >&2; exit 1; }
  echo "agents: installed in $(( $(date +%s) - start ))s, $(du -sh node_modules | cut -f1)" >&2
fi
echo "claude $(node_modules/.bin/claude --version 2>/dev/null | head -1)"
echo "codex $(node_modules/.bin/codex --version 2>/dev/null | head -1)"
