#!/usr/bin/env bash
# SIP set-up benchmark (not a test): how many call set-ups per second one
# media-processor call engine sustains against a SIPp UAS (SIPp answers; we
# talk for 1 s with RTP both ways from our side, then send BYE), and how much
# CPU media-processor spends per set-up. The engine runs in the benchmark
# process (benches/sip_setup.rs, release build), SIPp in its own.
#
#   scripts/bench-sip.sh [rates (default "200 500 800")] [seconds (default 10)]
#
# Then a flood run (BENCH_FLOOD=0 skips it): 50,000 garbage datagrams/s at
# the SIP port for 10 s while 20 real calls run.
#
# Each rate line reports the achieved set-up rate, answered/failed calls,
# set-up time p50/p99 (INVITE to 200), and CPU: seconds, share of one core,
# ms per call. SIPp's own CPU is reported beside it (ps).
set -euo pipefail
cd "$(dirname "$0")/.."

RATES="${1:-200 500 800}"
SECONDS_PER_RATE="${2:-10}"
TALK_MS="${BENCH_TALK_MS:-1000}"

scripts/test-env.sh >/dev/null
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo bench -p media-processor --bench sip_setup --locked --no-run -q 2>/dev/null
BIN=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/sip_setup-* | grep -v '\.d$' | head -1)
LOGS="target/bench-logs/sip-$(date +%s)"
mkdir -p "$LOGS"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for rate in $RATES; do
  port=$((20000 + RANDOM % 20000))
  sipp -sn uas -i 127.0.0.1 -p "$port" -mp $((port + 2)) -nostdin \
    -trace_err -error_file "$LOGS/sipp-$rate-errors.log" >/dev/null 2>&1 &
  sipp_pid=$!
  sleep 0.5
  "$BIN" --sipp "127.0.0.1:$port" --rate "$rate" --seconds "$SECONDS_PER_RATE" --talk-ms "$TALK_MS"
  echo "  sipp cpu: $(ps -o time= -p "$sipp_pid" | xargs) (hh:mm:ss) for the whole run"
  kill "$sipp_pid" 2>/dev/null || true
  sleep 1
done

# Flood: 50,000 garbage datagrams a second at the SIP port for the whole run
# while 20 real calls (2 a second for 10 s) go on.
if [ "${BENCH_FLOOD:-1}" = 1 ]; then
  port=$((20000 + RANDOM % 20000))
  sipp -sn uas -i 127.0.0.1 -p "$port" -mp $((port + 2)) -nostdin \
    -trace_err -error_file "$LOGS/sipp-flood-errors.log" >/dev/null 2>&1 &
  sipp_pid=$!
  sleep 0.5
  echo "flood run:"
  "$BIN" --sipp "127.0.0.1:$port" --rate 2 --seconds 10 --talk-ms "$TALK_MS" --flood 50000
  kill "$sipp_pid" 2>/dev/null || true
fi
