#!/usr/bin/env bash
# Dispatch benchmark (not a test): one campaign of N contacts (default 10,000)
# against the sim:// trunk with a short talk time, in the compose topology run
# as local processes: commands on Kafka (tansu), events on RabbitMQ, every
# service on its own MariaDB database, release binaries.
#
# Reports:
#   - calls per second from the campaign's start until the last CDR is stored;
#   - p50 / p99 from the `dial` command being written (scheduler outbox) to
#     the INVITE being sent (the CDR's dialed_at).
#
#   scripts/bench-dispatch.sh [contacts] [max_cps] [max_concurrent]
set -euo pipefail
cd "$(dirname "$0")/.."

N="${1:-10000}"
CPS="${2:-1000}"
CONC="${3:-500}"
TALK_MS="${BENCH_TALK_MS:-200}"

scripts/test-env.sh >/dev/null
export PATH="${DIALSTACK_TOOLS:-$HOME/.cache/dialstack/tools}/bin:$HOME/.cargo/bin:$PATH"
cargo build --release --bins --locked -q
BIN=target/release
RUN="bench$(date +%s)"
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
    DIALSTACK_COMMANDS_URL="kafka://127.0.0.1:9092?namespace=$RUN" \
    "$@" "$BIN/$name" >"$LOGS/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 240); do
    curl -fs "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  echo "$name did not become ready; see $LOGS/$name.log" >&2
  exit 1
}

PU=$(free_port); PS=$(free_port); PST=$(free_port); PM=$(free_port); PMP=$(free_port)
ADMIN="bench admin password 1"
SVC="bench service password 1"
start user-service "$PU" DIALSTACK_ADMIN_PASSWORD="$ADMIN" DIALSTACK_SERVICE_PASSWORD="$SVC"
JWKS="http://127.0.0.1:$PU/.well-known/jwks.json"
start task-scheduler "$PS" DIALSTACK_JWKS_URL="$JWKS"
start storage-service "$PST" DIALSTACK_JWKS_URL="$JWKS"
start monitor-service "$PM" DIALSTACK_JWKS_URL="$JWKS"
start media-processor "$PMP" DIALSTACK_JWKS_URL="$JWKS" \
  DIALSTACK_SIP_TRUNK="sim://?answer=1&ring_ms=0" DIALSTACK_SIP_ADDR=127.0.0.1:0 DIALSTACK_RTP_PORTS=0 \
  DIALSTACK_SCHEDULER_URL="http://127.0.0.1:$PS" DIALSTACK_USER_SERVICE_URL="http://127.0.0.1:$PU" \
  DIALSTACK_SERVICE_PASSWORD="$SVC" DIALSTACK_MAX_CALLS=2000

TOKEN=$(curl -fs "http://127.0.0.1:$PU/v1/auth/login" -H 'content-type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$ADMIN\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
python3 - "$N" "$CPS" "$CONC" "$TALK_MS" >"$LOGS/campaign.json" <<'PY'
import json, sys
n, cps, conc, talk = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
print(json.dumps({"name": "bench", "caller_id": "+15550100000", "max_cps": cps, "max_concurrent": conc,
                  "talk_time_ms": talk, "contacts": ["+1555%07d" % (1000000 + i) for i in range(n)]}))
PY
ID=$(curl -fs "http://127.0.0.1:$PS/v1/campaigns" -H "authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' --data-binary @"$LOGS/campaign.json" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
curl -fs -X POST "http://127.0.0.1:$PS/v1/campaigns/$ID/start" -H "authorization: Bearer $TOKEN" >/dev/null
echo "campaign $ID started: $N contacts, max_cps $CPS, max_concurrent $CONC, talk ${TALK_MS} ms"

SQL() { mariadb -uroot -h127.0.0.1 -N -B -e "$1"; }
deadline=$((SECONDS + 1800))
while :; do
  done_cdrs=$(SQL "SELECT COUNT(*) FROM ${RUN}_storage_service.cdrs WHERE state='completed'")
  printf '\r%s / %s CDRs completed' "$done_cdrs" "$N"
  [ "$done_cdrs" -ge "$N" ] && break
  if [ $SECONDS -gt $deadline ]; then echo; echo "timed out" >&2; exit 1; fi
  sleep 1
done
echo

python3 - "$RUN" <<'PY'
import subprocess, sys
run = sys.argv[1]
def q(sql):
    out = subprocess.run(["mariadb", "-uroot", "-h127.0.0.1", "-N", "-B", "-e", sql], capture_output=True, text=True, check=True).stdout
    return [l.split("\t") for l in out.strip().splitlines()]
started = int(q(f"SELECT started_at FROM {run}_task_scheduler.campaigns")[0][0])
last = int(q(f"SELECT MAX(updated_at) FROM {run}_storage_service.cdrs")[0][0])
n = int(q(f"SELECT COUNT(*) FROM {run}_storage_service.cdrs WHERE state='completed'")[0][0])
outcomes = q(f"SELECT outcome, COUNT(*) FROM {run}_storage_service.cdrs GROUP BY outcome")
lat = sorted(int(r[0]) for r in q(
    f"SELECT c.dialed_at - o.created_at FROM {run}_task_scheduler.outbox o "
    f"JOIN {run}_storage_service.cdrs c ON c.call_id = o.msg_key WHERE o.routing_key = 'dial'"))
def pct(p):
    return lat[min(len(lat) - 1, int(p * len(lat)))]
secs = (last - started) / 1000
print(f"calls completed:        {n}  {dict((o, int(c)) for o, c in outcomes)}")
print(f"start to last CDR:      {secs:.1f} s")
print(f"throughput:             {n / secs:.1f} calls/s")
print(f"dial command -> INVITE: p50 {pct(0.5)} ms, p99 {pct(0.99)} ms (n={len(lat)})")
PY
echo "logs: $LOGS"
