#!/usr/bin/env bash
# Login storm against a release user-service: CLIENTS concurrent clients
# (default 500), each from one of 250 loopback addresses, send ROUNDS bad
# logins each for unknown usernames (the costliest case: every attempt passes
# the throttling gates and asks for an argon2id hash). Midway, the owner logs
# in from an address it used before. Reports the peak RSS of the process
# (VmHWM) against its RSS before the storm, the answers of the storm by
# status, and the owner's latency and status.
#
#   scripts/bench-login.sh                  # 500 clients x 4 rounds
#   CLIENTS=200 ROUNDS=2 scripts/bench-login.sh
#
# Needs only the user-service binary (SQLite, in-memory channels); extra
# user-service variables pass through (e.g. DIALSTACK_PASSWORD_HASH_WORKERS).
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-500}
ROUNDS=${ROUNDS:-4}
PASSWORD="bench login owner password"
cargo build --release -p user-service >&2
BIN=target/release/user-service
DIR=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT

env -i PATH="$PATH" RUST_LOG=warn DIALSTACK_LOG_FORMAT=json \
  DIALSTACK_HTTP_ADDR="127.0.0.1:$PORT" \
  DIALSTACK_DATABASE_URL="sqlite://$DIR/users.db" \
  DIALSTACK_EVENTS_URL="memory://" \
  DIALSTACK_ADMIN_PASSWORD="$PASSWORD" \
  $(env | grep -E '^DIALSTACK_(PASSWORD_HASH|LOGIN)_' || true) \
  "$BIN" >"$DIR/user-service.log" 2>&1 &
pid=$!
for _ in $(seq 1 240); do
  curl -fs "http://127.0.0.1:$PORT/health/ready" >/dev/null 2>&1 && break
  sleep 0.25
done
curl -fs "http://127.0.0.1:$PORT/health/ready" >/dev/null || { cat "$DIR/user-service.log" >&2; exit 1; }

python3 - "$PORT" "$pid" "$CLIENTS" "$ROUNDS" "$PASSWORD" <<'PY'
import collections, http.client, json, os, sys, threading, time

port, pid, clients, rounds, password = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

def status_kb(field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])

def login(source, username, pw):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120, source_address=(source, 0))
    body = json.dumps({"username": username, "password": pw})
    t = time.monotonic()
    c.request("POST", "/v1/auth/login", body, {"content-type": "application/json"})
    r = c.getresponse()
    r.read()
    c.close()
    return r.status, time.monotonic() - t, r.getheader("retry-after")

owner_first = login("127.0.0.1", "admin", password)
assert owner_first[0] == 200, owner_first
time.sleep(0.5)
rss_before = status_kb("VmRSS")

counts = collections.Counter()
lock = threading.Lock()
start = threading.Barrier(clients + 1)

def storm(i):
    source = f"127.0.{1 + i // 250}.{1 + i % 250}"
    start.wait()
    for r in range(rounds):
        try:
            s, _, _ = login(source, f"nobody-{i}-{r}", "a wrong password")
        except Exception as e:
            s = type(e).__name__
        with lock:
            counts[s] += 1

threads = [threading.Thread(target=storm, args=(i,)) for i in range(clients)]
for t in threads:
    t.start()
t0 = time.monotonic()
start.wait()
# The owner logs in once the storm is under way; a 503 would be retried
# after its Retry-After, and the total counts.
time.sleep(0.5)
owner_t = time.monotonic()
tries = []
while True:
    s, took, retry = login("127.0.0.1", "admin", password)
    tries.append((s, round(took, 3)))
    if s != 503:
        break
    time.sleep(float(retry or 1))
owner_total = time.monotonic() - owner_t
for t in threads:
    t.join()
storm_s = time.monotonic() - t0
peak = status_kb("VmHWM")
rss_after = status_kb("VmRSS")
print(f"storm: {clients} clients x {rounds} bad logins in {storm_s:.1f} s: "
      + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=str)))
print(f"owner login during the storm: {owner_total * 1000:.0f} ms, attempts {tries}")
print(f"RSS before {rss_before / 1024:.1f} MiB, peak (VmHWM) {peak / 1024:.1f} MiB, after {rss_after / 1024:.1f} MiB")
PY
