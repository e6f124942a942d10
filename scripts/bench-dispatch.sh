#!/usr/bin/env bash
# Dispatch benchmark (not a test): one campaign of N contacts (default 10,000)
# against the sim:// trunk with a short talk time, in the compose topology run
# as local processes: commands on Kafka (tansu), events on RabbitMQ, every
# service on its own MariaDB database, release binaries.
#
# Reports:
#   - calls per second from the campaign's start until the last CDR is stored;
#   - p50 / p99 from the `dial` command being written (scheduler outbox) to
#     the INVITE being sent (the CDR's dialed_at);
#   - where the time went over the run: CPU seconds of each service, of
#     MariaDB, RabbitMQ and tansu, and MariaDB's statements, commits and log
#     flushes, per call.
#
#   scripts/bench-dispatch.sh [contacts] [max_cps] [max_concurrent]
#
# BENCH_BIN=dir runs the service binaries found in dir instead of building
# target/release (to bench a build kept aside while the tree changes).
set -euo pipefail
cd "$(dirname "$0")/.."

N="${1:-10000}"
CPS="${2:-1000}"
CONC="${3:-500}"
TALK_MS="${BENCH_TALK_MS:-200}"

scripts/test-env.sh >/dev/null
export PATH="${DIALSTACK_TOOLS:-$HOME/.cache/dialstack/tools}/bin:$HOME/.cargo/bin:$PATH"
if [ -n "${BENCH_BIN:-}" ]; then
  BIN="$BENCH_BIN"
else
  cargo build --release --bins --locked -q
  BIN=target/release
fi
RUN="bench$(date +%s)"
LOGS="target/bench-logs/$RUN"
mkdir -p "$LOGS"
COMMANDS_URL="kafka://127.0.0.1:9092?namespace=$RUN"
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

PU=$(free_port); PS=$(free_port); PST=$(free_port); PM=$(free_port); PMP=$(free_port)
ADMIN="bench admin password 1"
SVC="bench service password 1"
start user-service "$PU" DIALSTACK_ADMIN_PASSWORD="$ADMIN" DIALSTACK_SERVICE_PASSWORD="$SVC"
JWKS="http://127.0.0.1:$PU/.well-known/jwks.json"
start task-scheduler "$PS" DIALSTACK_JWKS_URL="$JWKS" DIALSTACK_MAX_CPS=5000
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
# Valid NANP numbers (area code 415, exchanges 200 and up): the scheduler
# checks numbers with libphonenumber.
print(json.dumps({"name": "bench", "caller_id": "+14155550100", "max_cps": cps, "max_concurrent": conc,
                  "talk_time_ms": talk, "contacts": ["+1415%07d" % (2000000 + i) for i in range(n)]}))
PY
ID=$(curl -fs "http://127.0.0.1:$PS/v1/campaigns" -H "authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' --data-binary @"$LOGS/campaign.json" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
SQL() { mariadb -uroot -h127.0.0.1 -N -B -e "$1"; }
# CPU ticks (utime + stime) of each process, and MariaDB's counters, at the
# start and at the end of the run.
WATCH="user-service:${pids[0]} task-scheduler:${pids[1]} storage-service:${pids[2]} monitor-service:${pids[3]} media-processor:${pids[4]}"
for name in mariadbd beam.smp tansu; do
  p=$(pgrep -x "$name" | head -1 || true)
  [ -n "$p" ] && WATCH="$WATCH $name:$p"
done
snapshot() { # file
  for w in $WATCH; do
    echo "cpu ${w%%:*} $(awk '{print $14 + $15}' "/proc/${w##*:}/stat" 2>/dev/null || echo 0)"
  done >"$1"
  SQL "SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions','Com_commit','Com_insert','Com_update','Com_select','Com_delete','Innodb_log_writes','Innodb_os_log_fsyncs','Handler_commit')" \
    | sed 's/^/db /' >>"$1"
}
snapshot "$LOGS/before.txt"
curl -fs -X POST "http://127.0.0.1:$PS/v1/campaigns/$ID/start" -H "authorization: Bearer $TOKEN" >/dev/null
echo "campaign $ID started: $N contacts, max_cps $CPS, max_concurrent $CONC, talk ${TALK_MS} ms"

deadline=$((SECONDS + 1800))
while :; do
  done_cdrs=$(SQL "SELECT COUNT(*) FROM ${RUN}_storage_service.cdrs WHERE state='completed'")
  printf '\r%s / %s CDRs completed' "$done_cdrs" "$N"
  [ "$done_cdrs" -ge "$N" ] && break
  if [ $SECONDS -gt $deadline ]; then echo; echo "timed out" >&2; exit 1; fi
  sleep 1
done
snapshot "$LOGS/after.txt"
echo

python3 - "$RUN" "$LOGS" "$(getconf CLK_TCK)" <<'PY'
import subprocess, sys
run, logs, hz = sys.argv[1], sys.argv[2], int(sys.argv[3])
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
def snap(name):
    out = {}
    for line in open(f"{logs}/{name}.txt"):
        kind, key, value = line.split()
        out[(kind, key)] = int(value)
    return out
before, after = snap("before"), snap("after")
delta = {k: after[k] - before.get(k, 0) for k in after}
cpu = sorted(((v / hz, k[1]) for k, v in delta.items() if k[0] == "cpu"), reverse=True)
total = sum(c for c, _ in cpu)
print(f"cpu over the run (s, cores = s / {secs:.1f} s, ms per call):")
for c, name in cpu:
    print(f"  {name:<16} {c:7.1f} s  {c / secs:4.2f} cores  {1000 * c / max(n, 1):6.2f} ms/call")
print(f"  {'total':<16} {total:7.1f} s  {total / secs:4.2f} cores  {1000 * total / max(n, 1):6.2f} ms/call")
print("mariadb per call: " + ", ".join(
    f"{k[1]} {v / max(n, 1):.1f}" for k, v in sorted(delta.items()) if k[0] == "db"))
PY
echo "logs: $LOGS"
