#!/usr/bin/env bash
# Static checks of the deployment files (called by scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")"
out="${TMPDIR:-/tmp}/dialstack-deploy-check"
# hadolint and kubernetes-validate come from pip, whose script directory may
# not be on PATH.
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
rm -rf "$out" && mkdir -p "$out"

echo "-- hadolint"
hadolint docker/Dockerfile

echo "-- docker-compose config (default, and with the elk profile)"
export DIALSTACK_ADMIN_PASSWORD=check DIALSTACK_SERVICE_PASSWORD=check
docker-compose -f compose.yml config -q
docker-compose -f compose.yml config >"$out/compose.yml"
docker-compose -f compose.yml --profile elk config -q
docker-compose -f compose.yml --profile elk config >"$out/compose-elk.yml"

echo "-- k8s MySQL init script is compose's"
# kustomize cannot read deploy/mysql/init.sql from the component, so it keeps
# a copy that must not drift.
cmp mysql/init.sql k8s/components/infra/mysql-init.sql

echo "-- kustomize + kubernetes-validate"
rendered=()
for overlay in k8s/overlays/*/; do
  name=$(basename "$overlay")
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
promtool check rules prometheus/rules.yml
promtool test rules prometheus/rules_test.yml

echo "-- amtool"
amtool check-config alertmanager/alertmanager.yml
# kustomize cannot read deploy/alertmanager/, so k8s/base keeps a copy.
cmp alertmanager/alertmanager.yml k8s/base/alertmanager.yml

echo "-- services vs deployment files"
python3 check_config.py --elk "$out/compose-elk.yml" filebeat/filebeat.yml "$out/compose.yml" "${rendered[@]}"

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
