#!/usr/bin/env bash
# Keeps RTP ahead of bulk traffic on a media interface: DSCP EF marking of the
# RTP/SIP ports and an HTB tree whose high-priority class carries EF.
#
#   deploy/network/qos.sh --dev eth1 --rate 1gbit --voice-rate 200mbit [--rtp 20000:29999] [--dry-run]
#
# --dry-run prints the commands instead of running them (no root needed).
set -euo pipefail

dev="" rate="" voice="" rtp="20000:29999" sip=5060 dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dev) dev=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --voice-rate) voice=$2; shift 2 ;;
    --rtp) rtp=$2; shift 2 ;;
    --sip) sip=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "qos.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
for v in dev rate voice; do
  if [ -z "${!v}" ]; then echo "qos.sh: --${v/voice/voice-rate} is required" >&2; exit 2; fi
done
if ! [[ "$rtp" =~ ^[0-9]+:[0-9]+$ ]]; then echo "qos.sh: --rtp must be lo:hi" >&2; exit 2; fi

run() { if [ "$dry" = 1 ]; then echo "$*"; else "$@"; fi; }

# DSCP: EF (46) for RTP, CS3 (24) for SIP signalling.
run iptables -t mangle -A OUTPUT -o "$dev" -p udp --sport "$rtp" -j DSCP --set-dscp 46
run iptables -t mangle -A OUTPUT -o "$dev" -p udp --sport "$sip" -j DSCP --set-dscp 24
# HTB: 1:10 voice (EF, guaranteed, first to borrow), 1:20 everything else.
run tc qdisc replace dev "$dev" root handle 1: htb default 20
run tc class replace dev "$dev" parent 1: classid 1:1 htb rate "$rate"
run tc class replace dev "$dev" parent 1:1 classid 1:10 htb rate "$voice" ceil "$rate" prio 0
run tc class replace dev "$dev" parent 1:1 classid 1:20 htb rate 1kbit ceil "$rate" prio 7
run tc qdisc replace dev "$dev" parent 1:10 handle 10: pfifo limit 1000
run tc qdisc replace dev "$dev" parent 1:20 handle 20: fq_codel
# The TOS byte carries DSCP << 2: EF = 0xb8.
run tc filter replace dev "$dev" parent 1: protocol ip prio 1 u32 match ip tos 0xb8 0xfc flowid 1:10
