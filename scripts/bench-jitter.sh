#!/usr/bin/env bash
# Jitter-buffer benchmark (not a test). There is no netem in this kernel, so
# a seeded UDP impairment relay (tests' rtp-impair) sits on the RTP path:
# media-processor's call engine sends its RTP to the relay (the SDP of the
# SIPp scenario points there), the relay delays, reorders and drops it
# (delay 20 ms ± 15 ms normal, 1 % reorder, 0.5 % loss plus bursts) and
# forwards it to SIPp, which echoes it back through the relay: what comes
# back carries the impairment. Once with the fixed 50 ms buffer, once
# adaptive; the same seed for both.
#
#   scripts/bench-jitter.sh [seconds per mode (default 120)] [calls (default 1)]
#
# Reported per mode: late loss % (arrived after playout), network loss %,
# playout delay added by the buffer p50/p95 (ms), concealed %, MOS.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${1:-120}"
SEED="${BENCH_SEED:-7}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/bench-build}"

scripts/test-env.sh >/dev/null
cargo bench -p media-processor --bench media_load --locked --no-run -q 2>/dev/null
cargo build -p dialstack-tests --release --bin rtp-impair --locked -q
BIN=$(ls -t "$CARGO_TARGET_DIR"/release/deps/media_load-* | grep -v '\.d$' | head -1)
RELAY="$CARGO_TARGET_DIR/release/rtp-impair"
LOGS="target/bench-logs/jitter-$(date +%s)"
mkdir -p "$LOGS"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "impairment: seed $SEED, delay 20 ms ± 15 ms (normal), reorder 1 %, loss 0.5 %, burst start 0.1 % x 3 packets"

for mode in fixed adaptive; do
  port=$((20000 + RANDOM % 5000 * 2))
  # SIPp takes media_port to media_port + 3 (audio and video, RTP and RTCP).
  relay_port=$((port + 20))
  media_port=$((port + 2))
  "$RELAY" --listen "127.0.0.1:$relay_port" --forward "127.0.0.1:$media_port" --seed "$SEED" \
    --delay-ms 20 --jitter-ms 15 --reorder 0.01 --loss 0.005 --burst-loss 0.001 --burst-len 3 \
    --stats-file "$LOGS/relay-$mode.json" >/dev/null 2>"$LOGS/relay-$mode.err" &
  relay_pid=$!
  sipp -sf tests/sipp/uas_echo_via_relay.xml -key relay_port "$relay_port" -rtp_echo \
    -i 127.0.0.1 -p "$port" -mp "$media_port" -nostdin \
    -trace_err -error_file "$LOGS/sipp-$mode-errors.log" >/dev/null 2>&1 &
  sipp_pid=$!
  sleep 0.5
  out=$(DIALSTACK_JITTER_BUFFER_MODE="$mode" "$BIN" --sipp "127.0.0.1:$port" --calls 1 --rate 1 \
    --seconds "$SECS" --record 0)
  kill "$sipp_pid" 2>/dev/null || true
  kill -INT "$relay_pid" 2>/dev/null || true
  wait "$relay_pid" 2>/dev/null || true
  python3 - "$mode" "$out" "$LOGS/relay-$mode.json" <<'PY'
import json, sys
mode, out, relay = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
try:
    r = json.load(open(relay))
except Exception:
    r = {}
print(f"{mode:8s} late_loss={out['late_pct']:.3f}% network_loss={out['lost_pct']:.3f}% "
      f"added_delay_p50={out['delay_p50_ms']} ms p95={out['delay_p95_ms']} ms "
      f"concealed={out['concealed_pct']:.3f}% mos={out['median_mos']:.2f} packets={out['rtp_received']}")
print(f"         relay: {json.dumps(r)}")
PY
done
