#!/usr/bin/env bash
# Media benchmark (not a test): N concurrent answered G.711 calls with RTP
# both ways through media-processor's whole media path (gate, 50 ms jitter
# buffer, RFC 3550 statistics, RTCP, E-model, stereo recording to a
# file:// store), SIPp answering and echoing the RTP (`-rtp_echo`); then the
# same load relayed by Debian's rtpengine in userspace (ng protocol), for
# the ratio of CPU per call.
#
#   scripts/bench-media.sh [calls (default "1000")] [seconds (default 30)]
#
# Reported per run: media-processor CPU-seconds per call-second, cores used,
# RSS per call, kernel UDP receive-buffer drops (RcvbufErrors delta, whole
# host), packets lost/late after the jitter buffer, median MOS; then
# rtpengine's CPU per call-second and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."

CALLS="${1:-1000}"
SECS="${2:-30}"
RECORD="${BENCH_RECORD:-1}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/bench-build}"

scripts/test-env.sh >/dev/null
if ! command -v rtpengine >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rtpengine-daemon >/dev/null
  # The package starts its own instance (kernel table, any interface); the
  # benchmark runs a private one.
  systemctl stop rtpengine-daemon 2>/dev/null || pkill -x rtpengine || true
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo bench -p media-processor --bench media_load --locked --no-run -q 2>/dev/null
cargo build -p dialstack-tests --release --bin rtp-load --locked -q
export RTP_LOAD="$CARGO_TARGET_DIR/release/rtp-load"
BIN=$(ls -t "$CARGO_TARGET_DIR"/release/deps/media_load-* | grep -v '\.d$' | head -1)
LOGS="target/bench-logs/media-$(date +%s)"
mkdir -p "$LOGS"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

for calls in $CALLS; do
  port=$((20000 + RANDOM % 5000 * 2))
  sipp -sn uas -rtp_echo -i 127.0.0.1 -p "$port" -mp $((port + 2)) -nostdin \
    -trace_err -error_file "$LOGS/sipp-$calls-errors.log" >/dev/null 2>&1 &
  sipp_pid=$!
  sleep 0.5
  echo "media-processor, $calls calls, ${SECS} s window, recording=$RECORD:"
  out=$("$BIN" --sipp "127.0.0.1:$port" --calls "$calls" --seconds "$SECS" --record "$RECORD" --recordings "$LOGS/rec-$calls")
  echo "  $out"
  echo "  sipp cpu: $(ps -o time= -p "$sipp_pid" | xargs) (hh:mm:ss, whole run)"
  kill "$sipp_pid" 2>/dev/null || true
  ours=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["cpu_s_per_call_s"])' "$out")
  sleep 1
  echo "rtpengine (userspace), $calls calls, ${SECS} s:"
  theirs_out=$(bash scripts/bench-rtpengine.sh "$calls" "$SECS" | tail -1)
  echo "  $theirs_out"
  theirs=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["rtpengine_cpu_per_call_sec"])' "$theirs_out")
  python3 -c 'import sys; o,t=map(float,sys.argv[1:]); print(f"ratio: media-processor/rtpengine CPU per call = {o/t:.2f} (target <= 0.5); rtpengine calls per core = {1/t:.0f}, ours = {1/o:.0f}")' "$ours" "$theirs"
done
