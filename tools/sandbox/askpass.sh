#!/bin/sh
# Git's credential prompt for the sandbox: git asks for a username, then a
# password; the token comes from the environment of the one git process that
# needs it (clone or push), never from a URL, an argument or .git/config.
case "$1" in
  Username*) echo "x-access-token" ;;
  *) echo "${GIT_TOKEN:-}" ;;
esac
