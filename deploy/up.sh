#!/usr/bin/env bash
# Starts the whole system on this machine with a demo job: PostgreSQL and
# RabbitMQ (installed where missing), the gateway, dispatcher, timeout-reaper
# and one bot-agent; creates a demo customer, posts a CSV task and prints its
# progress until it ends. Stop everything with deploy/down.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/lib.sh

PORT="${ORQ_DEMO_PORT:-8080}"
DB="${ORQ_DEMO_DB:-orquestra}"
RUN=.demo
mkdir -p "$RUN"

ensure_tools
ensure_postgres
ensure_rabbitmq

[ -f "$RUN/pids" ] && bash deploy/down.sh >/dev/null 2>&1 || true

say "building"
cargo build --workspace --bins
BIN="$CARGO_TARGET_DIR/debug"

psql "$ORQ_TEST_PG_URL/postgres" -qAtc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 \
  || psql "$ORQ_TEST_PG_URL/postgres" -qc "CREATE DATABASE \"$DB\""

export ORQ_DATABASE__URL="$ORQ_TEST_PG_URL/$DB"
export ORQ_GATEWAY__LISTEN="127.0.0.1:$PORT"
export ORQ_AMQP__PREFIX="${ORQ_AMQP__PREFIX:-orq}"
# The key that seals task secret keys: made once per demo database, kept.
KEY_FILE="$RUN/secret_key.$DB"
[ -s "$KEY_FILE" ] || python3 -c 'import secrets; print(secrets.token_hex(32))' >"$KEY_FILE"
export ORQ_SECURITY__SECRET_KEY="${ORQ_SECURITY__SECRET_KEY:-$(cat "$KEY_FILE")}"
GW="http://127.0.0.1:$PORT"

start() {
  local name=$1; shift
  "$@" >"$RUN/$name.log" 2>&1 &
  echo "$! $name" >>"$RUN/pids"
}

if port_open "$PORT"; then
  echo "port $PORT is already in use (another gateway?): stop it, or choose another with ORQ_DEMO_PORT" >&2
  exit 1
fi

say "starting gateway, dispatcher and timeout-reaper (logs in $RUN/)"
: >"$RUN/pids"
# A demo that fails half-way stops what it started (its logs stay).
trap 'code=$?; if [ $code -ne 0 ] && [ -s "$RUN/pids" ]; then
  echo "the demo failed; stopping what it started (logs in $RUN/)" >&2
  bash deploy/down.sh >/dev/null 2>&1
fi' EXIT
start gateway "$BIN/gateway"
start dispatcher "$BIN/dispatcher"
start timeout-reaper "$BIN/timeout-reaper"
for _ in $(seq 1 100); do
  curl -fsS "$GW/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "$GW/readyz" >/dev/null || { echo "the gateway did not get ready; see $RUN/gateway.log" >&2; exit 1; }

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

if ADMIN_JSON=$("$BIN/gateway" admin create-customer demo 2>/dev/null); then :; else
  ADMIN_JSON=$("$BIN/gateway" admin create-token --customer demo --role admin 2>/dev/null)
fi
ADMIN=$(echo "$ADMIN_JSON" | json '["access_token"]')
BOT=$("$BIN/gateway" admin create-token --customer demo --role bot 2>/dev/null | json '["access_token"]')

say "starting a bot-agent (system Vivo360 -> examples/vivo360_create_user.py)"
ORQ_AGENT__TOKEN="$BOT" ORQ_AGENT__NAME=demo-bot-1 ORQ_AGENT__GATEWAY_URL="$GW" \
  ORQ_DEMO_OUT="$PWD/$RUN/created-users.jsonl" \
  start bot-agent "$BIN/bot-agent" --config examples/agent.toml
AUTH="Authorization: Bearer $ADMIN"
for _ in $(seq 1 100); do
  [ "$(curl -fsS -H "$AUTH" "$GW/bots?name=demo-bot-1" | json '.__len__()')" = 1 ] && break
  sleep 0.2
done

say "posting the demo task (examples/vivo360_users.csv, base64)"
BODY=$(python3 -c 'import base64,json; print(json.dumps({"description": "Demo: create Vivo360 users", "system": "Vivo360", "attachment": base64.b64encode(open("examples/vivo360_users.csv","rb").read()).decode()}))')
TASK=$(curl -fsS -H "$AUTH" -H 'Content-Type: application/json' -d "$BODY" "$GW/tasks")
ID=$(echo "$TASK" | json '["id"]')
echo "task $ID"

STATUS=""
for _ in $(seq 1 300); do
  T=$(curl -fsS -H "$AUTH" "$GW/tasks/$ID")
  STATUS=$(echo "$T" | json '["status"]')
  printf '  %-9s %3s%%  (%s/%s rows)\n' "$STATUS" "$(echo "$T" | json '["percent"]')" \
    "$(echo "$T" | json '["rows_done"]')" "$(echo "$T" | json '["rows_total"]')"
  case "$STATUS" in COMPLETE|FAILED|TIMEOUT|CANCELED) break ;; esac
  sleep 0.3
done

say "history of task $ID"
curl -fsS -H "$AUTH" "$GW/tasks/$ID/events" \
  | python3 -c 'import json,sys; [print("  %s  %-14s %s" % (e["created_at"], e["type"], e["description"])) for e in json.load(sys.stdin)]'

cat <<MSG

Orquestra is running.
  gateway:      $GW   (try: curl -H "Authorization: Bearer $ADMIN" $GW/tasks)
  admin token:  $ADMIN
  dashboard:    $GW/dashboard   (log in with the admin token)
  logs:         $RUN/*.log
  stop:         deploy/down.sh
MSG
[ "$STATUS" = COMPLETE ]
