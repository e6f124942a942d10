#!/usr/bin/env bash
# The gate of a media-processor gray release (docs/OPERATIONS.md, "Canary
# release"). The canary Deployment (deploy/k8s/overlays/canary) already runs
# the new image and takes its share of calls; this script lets it soak, asks
# Prometheus how its calls went, and then either promotes the release or
# rolls the canary back:
#
#   promote   both within thresholds, with enough calls to judge: apply the
#             prod overlay rendered on the new tags (--promote-manifests),
#             wait for every Deployment's rollout, delete the canary;
#   rollback  a threshold crossed (at the end of the soak, or earlier once
#             enough calls show it): delete the canary, the stable tier goes on;
#   undecided Prometheus unreachable, an error or empty answer, or too few
#             calls: never a promotion; the canary is rolled back too.
#
# What is judged, over the soak, on the canary's own series (by default
# track="canary", the label deploy/prometheus/kubernetes.yml derives from
# the pod label dialstack.io/track):
#   failure rate   failures / completed calls (DESIGN §8: failed, and
#                  rejected by the network), from media-processor's
#                  dialstack_media_call_failures_total and
#                  dialstack_media_calls_completed_total;
#   poor MOS share calls with MOS below 3.6 / calls with a MOS, from
#                  dialstack_call_mos (bucket le="3.6", count).
# All four series must be present: a missing one is "undecided", not zero.
#
# Usage: scripts/canary-gate.sh --prometheus URL --promote-manifests FILE [options]
#   --prometheus URL          Prometheus base URL (default $PROMETHEUS_URL)
#   --promote-manifests FILE  the prod overlay rendered on the new tags
#   --soak DURATION           time the canary takes calls before the verdict (30m; s, m, h)
#   --interval DURATION       poll period during the soak (1m)
#   --max-failure-rate R      highest acceptable failure rate (0.05, the alert's)
#   --max-poor-mos R          highest acceptable share of MOS below 3.6 (0.10, the alert's)
#   --min-calls N             completed calls needed for a verdict (200)
#   --min-measured N          calls with a MOS needed for a verdict (50)
#   --selector MATCHERS       the canary's series (track="canary")
#   --namespace NS            (dialstack)
#   --tries N                 attempts of the final query, 10 s apart (3)
#   --dry-run                 print the kubectl commands instead of running them
#   --print-query             print the PromQL query and exit
# Environment: KUBECTL (default kubectl), PROMETHEUS_URL,
#   CANARY_CALLS_METRIC, CANARY_FAILURES_METRIC (the counters above).
# Exit status: 0 promoted, 1 rolled back (threshold crossed), 2 usage or
# promotion failure, 3 rolled back undecided.
set -euo pipefail

say() { printf 'canary-gate: %s\n' "$*"; }
usage() { sed -n '/^# Usage:/,/^# Exit status/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

prometheus="${PROMETHEUS_URL:-}"
manifests=""
soak=30m
interval=1m
max_failure_rate=0.05
max_poor_mos=0.10
min_calls=200
min_measured=50
selector='track="canary"'
namespace=dialstack
tries=3
dry_run=0
print_query=0
KUBECTL="${KUBECTL:-kubectl}"
calls_metric="${CANARY_CALLS_METRIC:-dialstack_media_calls_completed_total}"
failures_metric="${CANARY_FAILURES_METRIC:-dialstack_media_call_failures_total}"

while [ $# -gt 0 ]; do
  case "$1" in
    --prometheus) prometheus="${2:?}"; shift 2 ;;
    --promote-manifests) manifests="${2:?}"; shift 2 ;;
    --soak) soak="${2:?}"; shift 2 ;;
    --interval) interval="${2:?}"; shift 2 ;;
    --max-failure-rate) max_failure_rate="${2:?}"; shift 2 ;;
    --max-poor-mos) max_poor_mos="${2:?}"; shift 2 ;;
    --min-calls) min_calls="${2:?}"; shift 2 ;;
    --min-measured) min_measured="${2:?}"; shift 2 ;;
    --selector) selector="${2:?}"; shift 2 ;;
    --namespace) namespace="${2:?}"; shift 2 ;;
    --tries) tries="${2:?}"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --print-query) print_query=1; shift ;;
    -h | --help) usage ;;
    *) say "unknown argument $1" >&2; usage ;;
  esac
done

seconds() { # 90s, 30m, 2h, or plain seconds
  [[ $1 =~ ^([0-9]+)([smh]?)$ ]] || { say "bad duration $1 (90s, 30m, 2h)" >&2; exit 2; }
  case "${BASH_REMATCH[2]}" in
    m) echo $((BASH_REMATCH[1] * 60)) ;;
    h) echo $((BASH_REMATCH[1] * 3600)) ;;
    *) echo $((BASH_REMATCH[1])) ;;
  esac
}
soak_s=$(seconds "$soak")
interval_s=$(seconds "$interval")
[ "$interval_s" -gt 0 ] || interval_s=60
for n in "$min_calls" "$min_measured" "$tries"; do
  case "$n" in *[!0-9]* | "") say "not a count: $n" >&2; exit 2 ;; esac
done

# The window covers the whole soak (at least a minute, so that increase()
# has two samples), whenever the verdict is asked.
window_s=$((soak_s > 60 ? soak_s : 60))
sel_le="${selector:+$selector,}le=\"3.6\""
query="label_replace(sum(increase(${calls_metric}{${selector}}[${window_s}s])), \"gate\", \"calls\", \"\", \"\")
or label_replace(sum(increase(${failures_metric}{${selector}}[${window_s}s])), \"gate\", \"failures\", \"\", \"\")
or label_replace(sum(increase(dialstack_call_mos_bucket{${sel_le}}[${window_s}s])), \"gate\", \"poor_mos\", \"\", \"\")
or label_replace(sum(increase(dialstack_call_mos_count{${selector}}[${window_s}s])), \"gate\", \"measured\", \"\", \"\")"

if [ "$print_query" = 1 ]; then
  printf '%s\n' "$query"
  exit 0
fi
[ -n "$prometheus" ] || { say "no Prometheus URL (--prometheus or PROMETHEUS_URL)" >&2; usage; }
[ -n "$manifests" ] || { say "no --promote-manifests (the prod overlay rendered on the new tags)" >&2; usage; }
[ -f "$manifests" ] || { say "$manifests: no such file" >&2; exit 2; }

kube() {
  if [ "$dry_run" = 1 ]; then
    printf '+ %s %s\n' "$KUBECTL" "$*"
  else
    $KUBECTL "$@"
  fi
}

answer=$(mktemp)
trap 'rm -f "$answer"' EXIT

# evaluate: asks Prometheus once. Prints one line of figures and sets
# `verdict` to pass, fail or undecided (with `why`).
verdict=undecided
why=""
evaluate() {
  # Not -f: Prometheus explains a refused query in a JSON body (400, 422).
  if ! curl -sS --max-time 10 -G --data-urlencode "query=$query" \
    "${prometheus%/}/api/v1/query" >"$answer" 2>"$answer.err"; then
    why="Prometheus did not answer: $(head -c 300 "$answer.err")"
    rm -f "$answer.err"
    verdict=undecided
    return
  fi
  rm -f "$answer.err"
  local out
  out=$(python3 - "$answer" "$max_failure_rate" "$max_poor_mos" "$min_calls" "$min_measured" <<'PY'
import json, sys

path, max_fr, max_poor, min_calls, min_measured = sys.argv[1:]
max_fr, max_poor = float(max_fr), float(max_poor)
min_calls, min_measured = int(min_calls), int(min_measured)
try:
    doc = json.load(open(path))
except ValueError as e:
    print(f"undecided|not a Prometheus answer ({e})|")
    sys.exit()
if doc.get("status") != "success":
    print(f"undecided|Prometheus answered {doc.get('status')}: {doc.get('error', '')}|")
    sys.exit()
data = doc.get("data") or {}
if data.get("resultType") != "vector":
    print(f"undecided|unexpected result type {data.get('resultType')}|")
    sys.exit()
got = {}
for r in data.get("result") or []:
    try:
        got[r["metric"]["gate"]] = float(r["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        print(f"undecided|unexpected series {r}|")
        sys.exit()
missing = [k for k in ("calls", "failures", "poor_mos", "measured") if k not in got]
if missing:
    print(f"undecided|no data for {', '.join(missing)}: is the canary running and scraped?|")
    sys.exit()
calls, failures, poor, measured = (got[k] for k in ("calls", "failures", "poor_mos", "measured"))
fr = failures / calls if calls > 0 else 0.0
pr = poor / measured if measured > 0 else 0.0
figures = (f"{calls:.0f} calls, {failures:.0f} failed ({fr:.2%}, max {max_fr:.2%}); "
           f"MOS below 3.6 in {poor:.0f} of {measured:.0f} ({pr:.2%}, max {max_poor:.2%})")
enough_calls, enough_mos = calls >= min_calls, measured >= min_measured
bad = []
if enough_calls and fr > max_fr:
    bad.append("failure rate")
if enough_mos and pr > max_poor:
    bad.append("poor MOS share")
if bad:
    print(f"fail|{' and '.join(bad)} above threshold|{figures}")
elif not (enough_calls and enough_mos):
    print(f"undecided|too few calls to judge: need {min_calls} completed and {min_measured} with a MOS|{figures}")
else:
    print(f"pass|within thresholds|{figures}")
PY
)
  verdict=${out%%|*}
  out=${out#*|}
  why=${out%%|*}
  local figures=${out#*|}
  [ -z "$figures" ] || say "$figures"
}

say "soaking for ${soak_s}s, then judging the canary ($selector) over the last ${window_s}s"
deadline=$((SECONDS + soak_s))
while [ "$SECONDS" -lt "$deadline" ]; do
  left=$((deadline - SECONDS))
  sleep $((left < interval_s ? left : interval_s))
  [ "$SECONDS" -lt "$deadline" ] || break
  evaluate
  if [ "$verdict" = fail ]; then
    say "early verdict: $why"
    break
  fi
  say "soaking: $why"
done

if [ "$verdict" != fail ]; then
  # Only an unreachable Prometheus is asked again; an answer is final.
  for ((try = 1; ; try++)); do
    evaluate
    if [ "$verdict" = undecided ] && [[ $why == "Prometheus did not answer"* ]] && [ "$try" -lt "$tries" ]; then
      say "$why; asking again in 10 s"
      sleep 10
      continue
    fi
    break
  done
fi

rollback() {
  say "rolling back: deleting the canary; the stable tier keeps its image"
  kube -n "$namespace" delete deployment media-processor-canary --ignore-not-found --wait=true
}

case "$verdict" in
  pass)
    say "verdict: promote ($why)"
    kube apply -f "$manifests"
    for d in user-service task-scheduler media-processor storage-service monitor-service; do
      if ! kube -n "$namespace" rollout status "deployment/$d" --timeout=15m; then
        say "rollout of $d did not finish; the canary is left running for inspection" >&2
        exit 2
      fi
    done
    kube -n "$namespace" delete deployment media-processor-canary --ignore-not-found --wait=true
    say "promoted"
    exit 0
    ;;
  fail)
    say "verdict: roll back ($why)"
    rollback
    exit 1
    ;;
  *)
    say "verdict: undecided, no promotion ($why)"
    rollback
    exit 3
    ;;
esac
