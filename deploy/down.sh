#!/usr/bin/env bash
# Stops what deploy/up.sh started (SIGTERM, then SIGKILL after 10 s).
set -u
cd "$(dirname "$0")/.."
[ -f .demo/pids ] || { echo "nothing to stop"; exit 0; }
while read -r pid name; do
  kill -TERM "$pid" 2>/dev/null && echo "stopping $name ($pid)"
done <.demo/pids
for _ in $(seq 1 50); do
  alive=0
  while read -r pid _; do kill -0 "$pid" 2>/dev/null && alive=1; done <.demo/pids
  [ $alive = 0 ] && break
  sleep 0.2
done
while read -r pid _; do kill -KILL "$pid" 2>/dev/null; done <.demo/pids
rm -f .demo/pids
