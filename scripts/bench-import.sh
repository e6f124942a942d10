#!/usr/bin/env bash
# Lead import benchmark (not a test): a CSV of N rows (default 1,000,000;
# phone, timezone, priority, names and one custom column, so every row also
# writes a customer.upserted event) streamed into one campaign of a release
# task-scheduler on MariaDB. Reports wall time, rows per second and the
# scheduler's peak RSS (VmHWM) before and after.
#
#   scripts/bench-import.sh [rows]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000000}"
scripts/test-env.sh >/dev/null
cargo build --release --locked -q -p user-service -p task-scheduler
BIN=target/release
RUN="imp$(date +%s)"
LOGS="target/bench-logs/$RUN"
mkdir -p "$LOGS"
MYSQL="mysql://root@127.0.0.1:3306"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() { # name port extra-env...
  local name=$1 port=$2; shift 2
  env -i PATH="$PATH" DIALSTACK_LOG_FORMAT=json RUST_LOG=warn \
    DIALSTACK_HTTP_ADDR="127.0.0.1:$port" \
    DIALSTACK_DATABASE_URL="$MYSQL/${RUN}_${name//-/_}" \
    DIALSTACK_EVENTS_URL="amqp://guest:guest@127.0.0.1:5672/%2f?namespace=$RUN&queue_expires_ms=600000" \
    DIALSTACK_COMMANDS_URL="memory://$RUN" \
    "$@" "$BIN/$name" >"$LOGS/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 240); do
    curl -fs "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  echo "$name did not become ready; see $LOGS/$name.log" >&2
  exit 1
}
PU=$(free_port); PS=$(free_port)
ADMIN="bench admin password 1"
start user-service "$PU" DIALSTACK_ADMIN_PASSWORD="$ADMIN"
start task-scheduler "$PS" DIALSTACK_JWKS_URL="http://127.0.0.1:$PU/.well-known/jwks.json"
SCHED_PID=${pids[-1]}
TOKEN=$(curl -fs "http://127.0.0.1:$PU/v1/auth/login" -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$ADMIN\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
CSV="$LOGS/leads.csv"
python3 - "$N" >"$CSV" <<'PY'
import sys
n = int(sys.argv[1])
w = sys.stdout.write
w("phone,timezone,priority,first_name,last_name,plan\n")
zones = ["America/New_York", "America/Chicago", "", "America/Los_Angeles"]
for i in range(n):
    w("+1415%07d,%s,%d,Ann%d,Lee,gold\n" % (1000000 + i, zones[i % 4], i % 10, i))
PY
echo "csv: $N rows, $(du -h "$CSV" | cut -f1)"
ID=$(curl -fs "http://127.0.0.1:$PS/v1/campaigns" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"name":"import bench","caller_id":"+14155550100","max_concurrent":10,"max_cps":1}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
hwm() { awk '/VmHWM/ {print $2}' "/proc/$SCHED_PID/status"; }
BEFORE=$(hwm)
START=$(date +%s.%N)
curl -fs "http://127.0.0.1:$PS/v1/campaigns/$ID/leads" -H "authorization: Bearer $TOKEN" \
  -H 'content-type: text/csv' --data-binary @"$CSV" -o "$LOGS/report.json"
END=$(date +%s.%N)
AFTER=$(hwm)
python3 - "$LOGS/report.json" "$START" "$END" "$BEFORE" "$AFTER" "$N" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
secs = float(sys.argv[3]) - float(sys.argv[2])
n = int(sys.argv[6])
print(f"rows read:   {r['rows']}  accepted {r['accepted']}  duplicates {r['duplicates']}  rejected {r['rejected']}")
print(f"import:      {secs:.1f} s  ({n / secs:,.0f} rows/s)")
print(f"scheduler peak RSS: {int(sys.argv[4]) / 1024:.1f} MiB before, {int(sys.argv[5]) / 1024:.1f} MiB after")
PY
echo "logs: $LOGS"
