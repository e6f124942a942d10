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
COMMANDS_URL="memory://$RUN"
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
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
