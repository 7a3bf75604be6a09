# The aicode sandbox template for E2B: E2B's base image plus git, Node.js and the Claude Code and
# Codex CLIs at exactly the versions pinned in tools/agents, so a task installs nothing at start.
#
# Build it from the repository root (the COPY lines read tools/agents/); see e2b/README.md:
#   e2b template create aicode-agents -p . -d e2b/e2b.Dockerfile --cpu-count 2 --memory-mb 2048
#
# Only plain FROM/USER/ENV/RUN/COPY/WORKDIR instructions: E2B's current build (the Template SDK's
# fromDockerfile, used by `e2b template create`) turns each of them into a build step.
FROM e2bdev/base:latest

USER root

# git, and the CA bundle for HTTPS clones. The base image has both already (and Node.js 20 in
# /usr/local); installing them again is a no-op that keeps this file correct if that changes.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends git ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Node.js >= 18 (Claude Code's engines field; Codex needs >= 16). Debian's nodejs only when the
# base image has none, or an older one.
RUN if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' 2>/dev/null; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && node --version && npm --version

# The agent CLIs: `npm ci` from a copy of tools/agents/package.json + package-lock.json (the lock
# file pins every package and its integrity hash), into /opt/aicode/tools as in the local sandbox.
# npm runs Claude Code's postinstall, which puts its native binary in place. `claude` and `codex`
# go in /usr/local/bin, which is on every PATH, including login shells (/etc/profile resets PATH).
COPY tools/agents/package.json /opt/aicode/tools/package.json
COPY tools/agents/package-lock.json /opt/aicode/tools/package-lock.json
RUN cd /opt/aicode/tools \
 && npm ci --no-audit --no-fund --loglevel=error \
 && node -e ' \
      const pins = require("./package.json").dependencies; \
      for (const [name, want] of Object.entries(pins)) { \
        const have = require("./node_modules/" + name + "/package.json").version; \
        if (have !== want) { console.error(name + ": installed " + have + ", pinned " + want); process.exit(1); } \
      }' \
 && ln -sf /opt/aicode/tools/node_modules/.bin/claude /usr/local/bin/claude \
 && ln -sf /opt/aicode/tools/node_modules/.bin/codex /usr/local/bin/codex \
 && chmod -R a+rX /opt/aicode/tools \
 && npm cache clean --force \
 && claude --version \
 && codex --version

# The CLIs must not update themselves inside a task.
ENV DISABLE_AUTOUPDATER=1

# Sandboxes run as E2B's default user, in its home (envd's defaults).
USER user
WORKDIR /home/user
