#!/usr/bin/env bash
# Checks of the deployment files (called by scripts/test.sh): lint, render
# and validate compose and every Kubernetes overlay, the services' settings
# against them (check_config.py), Prometheus and Alertmanager configs, the
# dashboards' queries, the MySQL init script, and the canary gate
# (scripts/canary-gate.sh) against recorded Prometheus answers served on
# 127.0.0.1 by deploy/canary/fake_prometheus.py. Nothing is left running.
set -euo pipefail
cd "$(dirname "$0")"
out="${TMPDIR:-/tmp}/dialstack-deploy-check"
# hadolint, kubernetes-validate: the tools' virtual environment
# (scripts/test-env.sh installs them there).
PATH="${DIALSTACK_TOOLS:-$HOME/.cache/dialstack/tools}/venv/bin:$PATH"
rm -rf "$out" && mkdir -p "$out"

# fill EXAMPLE OUT: a copy of an env example with a random value for every
# empty key and <KEY> in a value replaced by KEY's value, as an operator would.
fill() {
  python3 - "$1" "$2" <<'PY'
import base64, re, secrets, sys
# The key-encryption key is 32 bytes in base64; the previous one is blank
# but during a rotation.
kek = base64.b64encode(secrets.token_bytes(32)).decode()
vals = {}
for line in open(sys.argv[1]):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    key, _, value = line.partition("=")
    if not value:
        value = {"DIALSTACK_SIP_TRUNK": "sip:carrier.invalid:5060", "DIALSTACK_S3_ACCESS_KEY_ID": "dialstack",
                 "DIALSTACK_SIP_USERNAME": "", "DIALSTACK_SIP_PASSWORD": "",
                 "DIALSTACK_KEY_ENCRYPTION_KEY": kek,
                 "DIALSTACK_KEY_ENCRYPTION_KEY_PREVIOUS": ""}.get(key, secrets.token_hex(20))
    vals[key] = value
with open(sys.argv[2], "w") as f:
    for key, value in vals.items():
        f.write(f"{key}={re.sub(r'<([A-Z0-9_]+)>', lambda m: vals[m.group(1)], value)}\n")
PY
}

echo "-- hadolint"
hadolint docker/Dockerfile

echo "-- no default secrets in the files"
if grep -rnE "change-me|dev-admin|guest:guest|:guest@|dialstack-dev" compose.yml .env.example k8s mysql; then
  echo "a default secret is left (above)" >&2
  exit 1
fi

echo "-- docker-compose config: without its secrets it refuses, naming one"
: >"$out/empty.env"
if msg=$(env -i PATH="$PATH" HOME="$HOME" docker-compose --env-file "$out/empty.env" -f compose.yml config -q 2>&1); then
  echo "docker-compose config accepted a missing secret" >&2
  exit 1
fi
grep -qE "[A-Z_]+ is not set \(deploy/.env, see deploy/.env.example\)" <<<"$msg" || {
  echo "unclear message for a missing secret: $msg" >&2
  exit 1
}

echo "-- docker-compose config with .env.example filled in (default, and with the elk profile)"
fill .env.example "$out/compose.env"
dc() { env -i PATH="$PATH" HOME="$HOME" docker-compose --env-file "$out/compose.env" -f compose.yml "$@"; }
dc config -q
dc config >"$out/compose.yml"
dc --profile elk config -q
dc --profile elk config >"$out/compose-elk.yml"

echo "-- MySQL init script: one account per service, on its own database only"
# kustomize cannot read deploy/mysql/ from the component, so it keeps a copy
# that must not drift.
cmp mysql/init.sh k8s/components/infra/mysql-init.sh
(set -a && . "$out/compose.env" && DIALSTACK_INIT_PRINT=1 sh mysql/init.sh) >"$out/init.sql"
python3 - "$out/init.sql" <<'PY'
import re, sys
sql = open(sys.argv[1]).read()
grants = re.findall(r"GRANT (.+?) ON `?([^`.]+)`?\.\* TO '([^']+)'@'%'", sql)
want = {f"dialstack_{s}" for s in ("users", "scheduler", "media", "storage", "monitor")}
assert {u for _, _, u in grants} == want, grants
for priv, db, user in grants:
    assert db == user, f"{user} is granted rights on {db}"
assert "*.*" not in sql and "GRANT OPTION" not in sql.upper(), sql
print(f"{len(grants)} accounts, each on its own database")
PY
if (set -a && . "$out/compose.env" && unset MYSQL_MEDIA_PASSWORD && DIALSTACK_INIT_PRINT=1 sh mysql/init.sh) >/dev/null 2>&1; then
  echo "mysql/init.sh accepted a missing password" >&2
  exit 1
fi

echo "-- kustomize + kubernetes-validate"
# dev generates its Secret from overlays/dev/dialstack.env (the operator's
# copy of k8s/dialstack.env.example): render it from a copy of the tree with
# one filled in. prod and canary render from the tree itself: they carry no
# Secret and need no file.
cp -r k8s "$out/k8s-tree"
fill k8s/dialstack.env.example "$out/k8s-tree/overlays/dev/dialstack.env"
rendered=()
for overlay in k8s/overlays/*/; do
  name=$(basename "$overlay")
  if [ "$name" = dev ]; then overlay="$out/k8s-tree/overlays/dev"; fi
  kubectl kustomize "$overlay" >"$out/k8s-$name.yml"
  # Custom resources (the Multus NAD) have no schema here; check_config.py checks them.
  python3 - "$out/k8s-$name.yml" "$out/k8s-$name-core.yml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] != "NetworkAttachmentDefinition"]
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
PY
  kubernetes-validate --strict --quiet "$out/k8s-$name-core.yml"
  rendered+=("$out/k8s-$name.yml")
done

echo "-- promtool"
cp prometheus/rules.yml "$out/rules.yml"
sed 's|/etc/prometheus/rules.yml|rules.yml|' prometheus/prometheus.yml >"$out/prometheus.yml"
promtool check config "$out/prometheus.yml"
# Debian's promtool is built without Kubernetes discovery: check the cluster
# config's relabelling with a static target in its place.
python3 - prometheus/kubernetes.yml "$out/prometheus-k8s.yml" <<'PY'
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
c["rule_files"] = ["rules.yml"]
for job in c["scrape_configs"]:
    assert job.pop("kubernetes_sd_configs"), job["job_name"]
    job["static_configs"] = [{"targets": ["pod.invalid:9090"]}]
yaml.safe_dump(c, open(sys.argv[2], "w"))
PY
promtool check config "$out/prometheus-k8s.yml"
promtool check rules prometheus/rules.yml
promtool test rules prometheus/rules_test.yml

echo "-- amtool"
amtool check-config alertmanager/alertmanager.yml
# kustomize cannot read deploy/alertmanager/, so k8s/base keeps a copy.
cmp alertmanager/alertmanager.yml k8s/base/alertmanager.yml

echo "-- services vs deployment files"
python3 check_config.py --elk "$out/compose-elk.yml" filebeat/filebeat.yml \
  --secret-keys k8s/dialstack.env.example \
  --production "$out/k8s-prod.yml" --production "$out/k8s-canary.yml" \
  "$out/compose.yml" "${rendered[@]}"

echo "-- grafana dashboards: JSON, datasource, and every panel's PromQL parses"
python3 - "$out/panels.yml" grafana/dashboards/*.json <<'PY'
import json, sys, yaml
rules = []
for path in sys.argv[2:]:
    d = json.load(open(path))
    assert d.get("uid") and d.get("panels"), f"{path}: no uid or panels"
    names = [v["name"] for v in d.get("templating", {}).get("list", [])]
    assert "datasource" in names, f"{path}: no $datasource variable"
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        # Dashboards import into any Grafana: the data source is a variable.
        assert p["datasource"]["uid"] == "${datasource}", f"{path}: panel {p['title']} datasource"
        for t in p["targets"]:
            rules.append({"record": f"panel:{d['uid'].replace('-', '_')}:{p['id']}_{t['refId']}", "expr": t["expr"]})
yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}, open(sys.argv[1], "w"))
print(f"{len(rules)} panel queries")
PY
promtool check rules "$out/panels.yml"

echo "-- qos.sh --dry-run"
dry=$(network/qos.sh --dev eth1 --rate 1gbit --voice-rate 200mbit --dry-run)
grep -q "set-dscp 46" <<<"$dry"
grep -q "htb rate 200mbit" <<<"$dry"
if network/qos.sh --dev eth1 2>/dev/null; then echo "qos.sh accepted missing rates" >&2; exit 1; fi

echo "-- canary gate against recorded Prometheus answers"
gate=../scripts/canary-gate.sh
# Its query parses.
python3 - "$out/gate-rules.yml" "$("$gate" --print-query --soak 30m)" <<'PY'
import sys, yaml
yaml.safe_dump({"groups": [{"name": "gate", "rules": [{"record": "canary:gate", "expr": sys.argv[2]}]}]},
               open(sys.argv[1], "w"))
PY
promtool check rules "$out/gate-rules.yml"
# A stand-in for Prometheus on 127.0.0.1, ended on every exit and by itself
# after 60 s at the latest.
server_pid=""
stop_server() { if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi; }
trap stop_server EXIT
timeout 60 python3 canary/fake_prometheus.py "$out/prom-port" 60 &
server_pid=$!
for _ in $(seq 50); do [ -s "$out/prom-port" ] && break; sleep 0.1; done
port=$(cat "$out/prom-port")
# kubectl stands in too: it records what it is asked.
printf '#!/bin/sh\necho "kubectl $*" >>"%s"\n' "$out/kubectl.log" >"$out/kubectl"
chmod +x "$out/kubectl"
gate_case() { # scenario want-exit want-action [prometheus-url]
  local url="${4:-http://127.0.0.1:$port/$1}" rc=0
  : >"$out/kubectl.log"
  KUBECTL="$out/kubectl" "$gate" --prometheus "$url" --promote-manifests "$out/k8s-prod.yml" \
    --soak 0 --tries 1 >"$out/gate-$1.log" 2>&1 || rc=$?
  local applied deleted
  applied=$(grep -c "^kubectl apply -f $out/k8s-prod.yml" "$out/kubectl.log" || true)
  deleted=$(grep -c "^kubectl -n dialstack delete deployment media-processor-canary" "$out/kubectl.log" || true)
  case "$3" in
    promote) [ "$applied" = 1 ] && [ "$deleted" = 1 ] && [ "$(grep -c 'rollout status' "$out/kubectl.log")" = 5 ] ;;
    rollback) [ "$applied" = 0 ] && [ "$deleted" = 1 ] ;;
  esac || { echo "gate on $1: expected $3, kubectl was asked:" >&2; cat "$out/kubectl.log" "$out/gate-$1.log" >&2; exit 1; }
  [ "$rc" = "$2" ] || { echo "gate on $1: exit $rc, expected $2" >&2; cat "$out/gate-$1.log" >&2; exit 1; }
  echo "$1: $3 (exit $rc): $(grep -m1 "verdict:" "$out/gate-$1.log" | sed "s/^canary-gate: verdict: //")"
}
gate_case healthy 0 promote
gate_case failing 1 rollback
gate_case poor-mos 1 rollback
gate_case too-few 3 rollback
gate_case no-failure-series 3 rollback
gate_case empty 3 rollback
gate_case error 3 rollback
stop_server
server_pid=""
# The server's port, now closed: Prometheus unreachable.
gate_case unreachable 3 rollback "http://127.0.0.1:$port"
# --dry-run runs nothing and prints what it would run.
: >"$out/kubectl.log"
dry=$(KUBECTL="$out/kubectl" "$gate" --prometheus "http://127.0.0.1:$port" --promote-manifests "$out/k8s-prod.yml" \
  --soak 0 --tries 1 --dry-run 2>&1 || true)
grep -q "^+ $out/kubectl -n dialstack delete deployment media-processor-canary" <<<"$dry"
[ ! -s "$out/kubectl.log" ] || { echo "--dry-run ran kubectl" >&2; exit 1; }
echo "dry run: prints, runs nothing"
