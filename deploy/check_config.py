#!/usr/bin/env python3
"""Checks that the deployment files agree with the services.

- every variable a service requires (read from its source: `required("...")`,
  the shared CommonConfig ones, DIALSTACK_JWKS_URL where it calls
  `require_jwks`) is set for it in deploy/compose.yml and in the rendered
  Kubernetes overlays;
- every port a service listens on (its `PORT` constant, SIP 5060 for the
  media tier) is exposed in both;
- the Multus NetworkAttachmentDefinition holds a valid JSON CNI config for
  macvlan with whereabouts IPAM.

Usage: check_config.py COMPOSE_CONFIG_YAML K8S_YAML [K8S_YAML ...]
(the first is the output of `docker-compose config`, the others of
`kubectl kustomize`).
"""
import json
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVICES = ["user-service", "task-scheduler", "media-processor", "storage-service", "monitor-service"]
COMMON_REQUIRED = {"DIALSTACK_DATABASE_URL", "DIALSTACK_EVENTS_URL", "DIALSTACK_COMMANDS_URL"}


def required_vars(service):
    src = "".join(p.read_text() for p in (ROOT / "services" / service / "src").rglob("*.rs"))
    found = set(re.findall(r'env\.required\("(DIALSTACK_[A-Z0-9_]+)"\)', src))
    found |= COMMON_REQUIRED
    if "require_jwks" in src:
        found.add("DIALSTACK_JWKS_URL")
    if service == "user-service":
        # The admin password is required on first start; deployments always set it.
        found.add("DIALSTACK_ADMIN_PASSWORD")
    return found


def ports(service):
    src = (ROOT / "services" / service / "src" / "lib.rs").read_text()
    port = int(re.search(r"pub const PORT: u16 = (\d+);", src).group(1))
    out = {(port, "tcp")}
    if service == "media-processor":
        out.add((5060, "udp"))
    return out


def compose_ports(spec):
    out = set()
    for p in spec.get("ports", []):
        if isinstance(p, dict):
            out.add((int(p["target"]), p.get("protocol", "tcp")))
            continue
        text, _, proto = str(p).partition("/")
        target = text.split(":")[-1]
        if "-" in target:
            continue
        out.add((int(target), proto or "tcp"))
    return out


def main():
    errors = []
    compose = yaml.safe_load(open(sys.argv[1]))
    for svc in SERVICES:
        spec = compose["services"].get(svc)
        if spec is None:
            errors.append(f"compose: no service {svc}")
            continue
        env = spec.get("environment", {})
        keys = set(env) if isinstance(env, dict) else {e.split("=", 1)[0] for e in env}
        for var in sorted(required_vars(svc) - keys):
            errors.append(f"compose: {svc} does not set {var}")
        for port in sorted(ports(svc) - compose_ports(spec)):
            errors.append(f"compose: {svc} does not expose {port}")

    for path in sys.argv[2:]:
        docs = [d for d in yaml.safe_load_all(open(path)) if d]
        configmaps = {d["metadata"]["name"]: set(d.get("data", {})) for d in docs if d["kind"] == "ConfigMap"}
        secrets = {d["metadata"]["name"]: set(d.get("stringData", {})) | set(d.get("data", {}) or {})
                   for d in docs if d["kind"] == "Secret"}
        deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
        services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
        for svc in SERVICES:
            dep = deployments.get(svc)
            if dep is None:
                errors.append(f"{path}: no Deployment {svc}")
                continue
            container = dep["spec"]["template"]["spec"]["containers"][0]
            keys = {e["name"] for e in container.get("env", [])}
            for src in container.get("envFrom", []):
                if "configMapRef" in src:
                    keys |= configmaps.get(src["configMapRef"]["name"], set())
                if "secretRef" in src:
                    keys |= secrets.get(src["secretRef"]["name"], set())
            for e in container.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["key"] not in secrets.get(ref["name"], set()):
                    errors.append(f"{path}: {svc} reads missing secret key {ref['key']}")
            for var in sorted(required_vars(svc) - keys):
                errors.append(f"{path}: {svc} does not set {var}")
            exposed = {(p["containerPort"], p.get("protocol", "TCP").lower()) for p in container.get("ports", [])}
            for port in sorted(ports(svc) - exposed):
                errors.append(f"{path}: {svc} does not expose {port}")
            if svc not in services:
                errors.append(f"{path}: no Service {svc}")
        for nad in (d for d in docs if d["kind"] == "NetworkAttachmentDefinition"):
            try:
                cni = json.loads(nad["spec"]["config"])
            except (KeyError, json.JSONDecodeError) as e:
                errors.append(f"{path}: NAD {nad['metadata']['name']}: config is not JSON: {e}")
                continue
            if cni.get("type") != "macvlan" or not cni.get("master"):
                errors.append(f"{path}: NAD {nad['metadata']['name']}: not a macvlan on a master interface")
            ipam = cni.get("ipam", {})
            if ipam.get("type") != "whereabouts" or not ipam.get("range"):
                errors.append(f"{path}: NAD {nad['metadata']['name']}: ipam is not whereabouts with a range")
            annotated = [d for d in deployments.values()
                         if d["spec"]["template"]["metadata"].get("annotations", {}).get("k8s.v1.cni.cncf.io/networks")
                         == nad["metadata"]["name"]]
            names = [d["metadata"]["name"] for d in annotated]
            if "media-processor" not in names or any(not n.startswith("media-processor") for n in names):
                errors.append(f"{path}: NAD {nad['metadata']['name']} must be attached to the media tier only: {names}")

    for e in errors:
        print(e)
    if errors:
        sys.exit(1)
    print(f"deployment files agree with the services ({len(SERVICES)} services, {len(sys.argv) - 1} files)")


if __name__ == "__main__":
    main()
