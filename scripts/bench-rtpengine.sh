#!/usr/bin/env bash
# CPU that Debian's rtpengine (userspace forwarding, no kernel module) spends
# relaying N bidirectional G.711 calls on loopback: the comparator for
# media-processor's CPU per call.
#
#   scripts/bench-rtpengine.sh [N=100] [SECS=20]
#
# Starts a private rtpengine on 127.0.0.1 (ng port $RTPE_NG_PORT, RTP ports
# $RTPE_PORT_MIN-$RTPE_PORT_MAX, $RTPE_THREADS threads), waits for its ng
# ping, runs `rtp-load --watch-pid` (which samples rtpengine's utime+stime
# and RSS over the sending window and /proc/net/snmp's UDP counters), stops
# rtpengine and prints one JSON line; the full rtp-load report and
# rtpengine's log stay in $OUT.
#
# Needs: apt-get install rtpengine-daemon; the rtp-load binary
# (cargo build -p dialstack-tests --bin rtp-load, or $RTP_LOAD).
set -euo pipefail

N=${1:-100}
SECS=${2:-20}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RTP_LOAD=${RTP_LOAD:-$ROOT/target/debug/rtp-load}
RTPE_NG_PORT=${RTPE_NG_PORT:-22222}
RTPE_PORT_MIN=${RTPE_PORT_MIN:-30000}
RTPE_PORT_MAX=${RTPE_PORT_MAX:-40000}
RTPE_THREADS=${RTPE_THREADS:-2}
OUT=${OUT:-$ROOT/target/bench-rtpengine}
mkdir -p "$OUT"

command -v rtpengine >/dev/null || { echo "rtpengine missing: apt-get install rtpengine-daemon" >&2; exit 2; }
[ -x "$RTP_LOAD" ] || { echo "$RTP_LOAD missing: cargo build -p dialstack-tests --bin rtp-load" >&2; exit 2; }
# Four ports per call (RTP and RTCP on each side).
if (( N * 4 > RTPE_PORT_MAX - RTPE_PORT_MIN )); then
    echo "$N calls need $((N * 4)) ports; widen RTPE_PORT_MIN/RTPE_PORT_MAX" >&2; exit 2
fi
# Two sockets per call here, four there, plus slack.
ulimit -n "$(( N * 4 + 1024 > 4096 ? N * 4 + 1024 : 4096 ))" 2>/dev/null || true

LOG="$OUT/rtpengine-$N.log"
PIDFILE="$OUT/rtpengine.pid"
# --config-file=none: the package's /etc/rtpengine/rtpengine.conf asks for
# the kernel table and other listeners. --table=-1: userspace forwarding only.
rtpengine --config-file=none --foreground --log-stderr --log-level=5 \
    --table=-1 --interface=127.0.0.1 \
    --listen-ng=127.0.0.1:"$RTPE_NG_PORT" \
    --port-min="$RTPE_PORT_MIN" --port-max="$RTPE_PORT_MAX" \
    --num-threads="$RTPE_THREADS" \
    --timeout=60 --delete-delay=0 \
    --pidfile="$PIDFILE" >"$LOG" 2>&1 &
RTPE=$!
stop() {
    if kill -0 "$RTPE" 2>/dev/null; then
        kill -TERM "$RTPE" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$RTPE" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$RTPE" 2>/dev/null || true
    fi
    wait "$RTPE" 2>/dev/null || true
}
trap stop EXIT

# Ready when it answers an ng ping (bounded: 10 s).
ready=
for _ in $(seq 100); do
    kill -0 "$RTPE" 2>/dev/null || { echo "rtpengine exited:" >&2; tail -20 "$LOG" >&2; exit 1; }
    if [ "$(printf 'p1 d7:command4:pinge' | timeout 1 nc -u -w1 127.0.0.1 "$RTPE_NG_PORT" 2>/dev/null)" = "p1 d6:result4:ponge" ]; then
        ready=1; break
    fi
    sleep 0.1
done
[ -n "$ready" ] || { echo "rtpengine did not answer ng ping" >&2; exit 1; }

cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$RTPE/stat"; }
# rtpengine's own timers cost CPU with no call at all: measured here so the
# per-call figure can be given net of it.
IDLE_SECS=${IDLE_SECS:-5}
idle0=$(cpu_ticks); sleep "$IDLE_SECS"; idle1=$(cpu_ticks)
cpu0=$(cpu_ticks)
REPORT="$OUT/rtp-load-$N.json"
"$RTP_LOAD" --calls "$N" --secs "$SECS" --ng 127.0.0.1:"$RTPE_NG_PORT" --watch-pid "$RTPE" >"$REPORT"
cpu1=$(cpu_ticks)
stop
trap - EXIT

python3 - "$REPORT" "$cpu0" "$cpu1" "$(getconf CLK_TCK)" "$(rtpengine --version 2>&1 | sed -n 's/^Version: //p')" \
    "$idle0" "$idle1" "$IDLE_SECS" "$(cat /proc/loadavg)" <<'EOF'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
w = r.get("watched") or {}
ticks = float(sys.argv[4])
idle_rate = (float(sys.argv[7]) - float(sys.argv[6])) / ticks / float(sys.argv[8])
cpu, elapsed = w.get("cpu_secs"), r["send_elapsed_secs"]
# Nominal call-seconds (packets sent / 100): see rtp-load's pace_ratio.
call_secs = r["call_secs"]
print(json.dumps({
    "bench": "rtpengine-userspace",
    "rtpengine_version": sys.argv[5],
    "calls": r["calls"],
    "secs": r["secs"],
    "rtpengine_cpu_secs": w.get("cpu_secs"),
    "rtpengine_cpu_per_call_sec": w.get("cpu_per_call_sec"),
    "rtpengine_cpu_per_call_sec_net_of_idle": (cpu - idle_rate * elapsed) / call_secs if cpu is not None and call_secs else None,
    "rtpengine_cpu_us_per_packet": w.get("cpu_us_per_packet"),
    "rtpengine_cpu_pct": w.get("cpu_pct"),
    "rtpengine_idle_cpu_pct": 100 * idle_rate,
    "rtpengine_setup_cpu_secs": w.get("setup_cpu_secs"),
    "rtpengine_whole_run_cpu_secs": (float(sys.argv[3]) - float(sys.argv[2])) / ticks,
    "rtpengine_rss_kb": w.get("rss_kb"),
    "packets_sent": r["packets_sent"],
    "packets_received": r["packets_received"],
    "loss_ratio": r["loss_ratio"],
    "rcvbuf_errors": r["udp"]["rcvbuf_errors"],
    "udp_in_errors": r["udp"]["in_errors"],
    "generator_cpu_secs": r["generator_cpu_secs"],
    "generator_user_secs": r["generator_user_secs"],
    "generator_sys_secs": r["generator_sys_secs"],
    "pace_ratio": r["pace_ratio"],
    "kept_pace": r["kept_pace"],
    "late_ticks": r["late_ticks"],
    "loadavg": sys.argv[9],
}))
EOF
