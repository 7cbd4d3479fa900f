#!/bin/sh
# Agent simulator of the compose demo (busybox sh; also runs under dash/bash).
#
# Plays a recorded Claude Code transcript into the layout a real agent writes,
#   $CLAUDE_PROJECTS_DIR/<workspace path, non-alphanumerics as '-'>/<session id>.jsonl
# one line at a time, appending as the agent CLI does, so the watcher discovers the session
# and follows it live. Idempotent: a restart resumes after the lines already written instead
# of writing them again. When the recording is played it stays up, idle, like an agent
# waiting for input (SIM_EXIT_WHEN_DONE=1: it exits 0 instead); `docker compose stop
# watcher` then makes the watcher drain, post the summary and complete the run.
set -eu

src=${SIM_SOURCE:-/sim/session.jsonl}
projects=${CLAUDE_PROJECTS_DIR:-/home/nonroot/.claude/projects}
workspace=${WORKSPACE_PATH:-/workspace/todo-api}
session=${SIM_SESSION_ID:-7f3c2a10-5b6e-4d8f-9a1b-2c3d4e5f6a7b}
delay=${SIM_LINE_DELAY:-1}
exit_when_done=${SIM_EXIT_WHEN_DONE:-0}   # 1: exit 0 once played (checks), else stay idle

trap 'echo "agent-simulator: stopped"; exit 0' TERM INT

[ -r "$src" ] || { echo "agent-simulator: cannot read the recording $src" >&2; exit 1; }
# The watcher's discovery rule (ASCII workspace paths): every non-alphanumeric char -> '-'.
dir="$projects/$(printf '%s' "$workspace" | sed 's/[^A-Za-z0-9]/-/g')"
out="$dir/$session.jsonl"
if ! mkdir -p "$dir" 2>/dev/null || ! touch "$out" 2>/dev/null; then
  echo "agent-simulator: cannot write $out as uid $(id -u): the shared volume must be" \
       "created by the watcher container first (its image owns the directory; run" \
       "'docker compose up', which starts the watcher before the simulator)" >&2
  exit 1
fi

total=$(($(wc -l < "$src")))
written=$(($(wc -l < "$out")))
echo "agent-simulator: $out: $written of $total lines already there, one more every ${delay}s"
# The loop runs in this shell (no pipeline) and sleeps in the background, so a SIGTERM from
# `docker compose stop` ends it at once instead of after the current sleep.
n=0
while IFS= read -r line || [ -n "$line" ]; do
  n=$((n + 1))
  [ "$n" -le "$written" ] && continue
  printf '%s\n' "$line" >> "$out"
  sleep "$delay" & wait $!
done < "$src"
echo "agent-simulator: recording played ($(($(wc -l < "$out"))) lines)"
[ "$exit_when_done" = 1 ] && exit 0
echo "agent-simulator: idle"
while :; do sleep 3600 & wait $!; done
