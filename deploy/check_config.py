#!/usr/bin/env python3
"""Checks that the deployment files agree with the services.

- every variable a service requires (read from its source: `required("...")`,
  the shared CommonConfig ones, DIALSTACK_JWKS_URL where it calls
  `require_jwks`) is set for it in deploy/compose.yml and in the rendered
  Kubernetes overlays;
- every port a service listens on (its `PORT` constant, SIP 5060 for the
  media tier) is exposed in both;
- the Multus NetworkAttachmentDefinition holds a valid JSON CNI config for
  macvlan with whereabouts IPAM, and the pods attached to it (and only they)
  set DIALSTACK_MEDIA_INTERFACE to the attachment's interface;
- every pod meets Pod Security "restricted" and has requests, limits and
  probes (a Job's pods: no probes); every image has a pinned tag;
- a StatefulSet has its headless Service and volume claims; a connection URL
  that names a Service rendered in the same files names its port, that
  Service's pods admit the services on it, and the passwords that create the
  accounts match the ones in the URLs;
- every Secret key, ConfigMap key or ConfigMap volume a pod names exists;
- media-processor (every Deployment of it) and storage-service name the same
  recording store (DIALSTACK_RECORDINGS_URL, a valid file:/// or s3:// URL,
  and the DIALSTACK_S3_* settings, keys both or neither), and
  media-processor's DIALSTACK_RECORDINGS_SPOOL is an absolute path on a
  mounted volume; DIALSTACK_S3_ENDPOINT, when it names a Service rendered in
  the same files, is checked like the connection URLs below (for those two);
- every workload with more than one replica (its own or its HPA's minimum)
  has a PodDisruptionBudget, and every budget covers such a workload;
- compose: no secret has a default (every ${...PASSWORD/TOKEN/SECRET/ENCRYPTION_KEY...} is
  ${VAR:?message}); every published port is bound to 127.0.0.1 but the media
  tier's SIP/RTP (UDP); nothing mounts the Docker socket; every service carries
  the `dialstack_service` label with its name and has the json-file driver
  copy it into its log lines, which promtail's config reads;
- one database account per service: each mysql:// URL (compose and k8s) logs
  in as the account named like its database, no two services share one, and
  the password that creates an account (MYSQL_<SERVICE>_PASSWORD) equals the
  one in its URL;
- a Secret a pod names but the files do not render (the operator's, in prod)
  has the key in deploy/k8s/dialstack.env.example (--secret-keys), and every
  key listed there is named by some pod;
- --production FILE: that rendering carries no Secret, sets
  DIALSTACK_ENVIRONMENT=production, and every media-processor Deployment takes
  DIALSTACK_SIP_TRUNK from the Secret (never sim://);
- a canary Deployment (`<name>-canary`) runs the same pod as `<name>` but for
  its image and its `dialstack.io/track` label;
- with --elk: the profile's services start only with it, Filebeat's config is
  the one mounted, reads the container log files (no Docker socket), keeps
  the lines that carry `dialstack_service` and names the `service` and
  `call_id` fields.

Usage: check_config.py [--elk COMPOSE_ELK_YAML FILEBEAT_YML] [--secret-keys ENV_EXAMPLE]
[--production K8S_YAML]... COMPOSE_CONFIG_YAML K8S_YAML [K8S_YAML ...] (the
compose files are the output of `docker-compose config`, without and with
`--profile elk`; the others of `kubectl kustomize`; a file given to
--production is also listed among the K8S_YAML).
"""
import json
import pathlib
import re
import sys
from urllib.parse import urlsplit

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVICES = ["user-service", "task-scheduler", "media-processor", "storage-service", "monitor-service"]
COMMON_REQUIRED = {"DIALSTACK_DATABASE_URL", "DIALSTACK_EVENTS_URL", "DIALSTACK_COMMANDS_URL"}
# The interface Multus gives the first attachment of a pod.
MEDIA_INTERFACE = "net1"
# Volume types the "restricted" Pod Security level allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}
# Which account-creating Secret key must match the password in URLs of a
# scheme; for mysql it depends on the account (one per service).
URL_PASSWORD_KEYS = {"amqp": "RABBITMQ_PASSWORD"}
# The label that names a service in its log lines (compose.yml).
LOG_LABEL = "dialstack_service"
SECRET_NAME = "dialstack"


def mysql_password_key(user):
    """The Secret key whose value creates MySQL account `user`
    (deploy/mysql/init.sh): dialstack_users -> MYSQL_USERS_PASSWORD."""
    return f"MYSQL_{user.removeprefix('dialstack_').upper()}_PASSWORD" if user else None


def check_database_accounts(where, urls, errors):
    """urls: {service: its DIALSTACK_DATABASE_URL}. One account per service,
    named like its database."""
    seen = {}
    for svc, url in sorted(urls.items()):
        if not url or not url.startswith("mysql://"):
            continue
        u = urlsplit(url)
        db = u.path.lstrip("/")
        if u.username != db:
            errors.append(f"{where}: {svc} logs in to database {db} as {u.username!r}, not as its own account {db!r}")
        if u.username in seen:
            errors.append(f"{where}: {svc} and {seen[u.username]} share the database account {u.username!r}")
        seen[u.username] = svc
# The recording store: the services that use it, and the settings that must
# be the same for all of them (dialstack_common::recordings).
RECORDING_SERVICES = ["media-processor", "storage-service"]
RECORDING_VARS = ["DIALSTACK_RECORDINGS_URL", "DIALSTACK_S3_ENDPOINT", "DIALSTACK_S3_REGION",
                  "DIALSTACK_S3_ACCESS_KEY_ID", "DIALSTACK_S3_SECRET_ACCESS_KEY"]
SPOOL_VAR = "DIALSTACK_RECORDINGS_SPOOL"
# Connection settings that are not *_URL keys: which services use them.
ENDPOINT_CLIENTS = {"DIALSTACK_S3_ENDPOINT": RECORDING_SERVICES}


def required_vars(service):
    src = "".join(p.read_text() for p in (ROOT / "services" / service / "src").rglob("*.rs"))
    found = set(re.findall(r'env\.required\("(DIALSTACK_[A-Z0-9_]+)"\)', src))
    found |= COMMON_REQUIRED
    if "require_jwks" in src:
        found.add("DIALSTACK_JWKS_URL")
    if service == "user-service":
        # The admin password is required on first start; deployments always set it.
        found.add("DIALSTACK_ADMIN_PASSWORD")
        # Required in production, where the signing keys are sealed with it
        # (src/kek.rs); every deployment sets it.
        found.add("DIALSTACK_KEY_ENCRYPTION_KEY")
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


def image_pinned(image):
    name = image.rsplit("/", 1)[-1]
    tag = name.partition(":")[2] if "@" not in name else "digest"
    return bool(tag) and tag != "latest"


def selects(selector, labels):
    """Whether a label selector (matchLabels / matchExpressions, or a plain
    Service selector map) picks a pod with these labels."""
    if selector is None:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        op, key, values = e["operator"], e["key"], e.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def recording_url_problem(url):
    """Why a DIALSTACK_RECORDINGS_URL is refused, as RecordingStore::from_url
    would (None when accepted)."""
    if not url:
        return "not set (each service would default to its own ./data/recordings)"
    if url.startswith("file://"):
        path = url[len("file://"):]
        if not path.startswith("/"):
            return "a file URL needs an absolute path (file:///...)"
        if any(c in path for c in "?#%"):
            return "the path may not contain ?, # or %"
        return None
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://"):].rstrip("/").partition("/")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            return f"bad bucket name {bucket!r}"
        if prefix and not all(re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", seg) for seg in prefix.split("/")):
            return f"bad key prefix {prefix!r}"
        return None
    return "must start with file:/// or s3://"


def check_recording_settings(where, settings, errors):
    """settings: {workload: {var: value}} for the services using the store;
    a value is what the pod gets (None: unset)."""
    if not settings:
        return
    def norm(var, value):
        # The services drop a trailing / from the URL and the endpoint.
        return value.rstrip("/") if value and var in ("DIALSTACK_RECORDINGS_URL", "DIALSTACK_S3_ENDPOINT") else value

    def shown(var, value):
        # Never print a secret, only whether it is set.
        return ("set" if value else "unset") if "SECRET" in var else repr(value)

    first, want = next(iter(settings.items()))
    for name, got in settings.items():
        for var in RECORDING_VARS:
            if norm(var, got.get(var)) != norm(var, want.get(var)):
                errors.append(f"{where}: {name} has {var} {shown(var, got.get(var))} but {first} has "
                              f"{shown(var, want.get(var))}; the recording store must be the same for both")
    for name, got in settings.items():
        why = recording_url_problem(got.get("DIALSTACK_RECORDINGS_URL"))
        if why:
            errors.append(f"{where}: {name} DIALSTACK_RECORDINGS_URL {got.get('DIALSTACK_RECORDINGS_URL')!r}: {why}")
        if bool(got.get("DIALSTACK_S3_ACCESS_KEY_ID")) != bool(got.get("DIALSTACK_S3_SECRET_ACCESS_KEY")):
            errors.append(f"{where}: {name} sets one of DIALSTACK_S3_ACCESS_KEY_ID and "
                          f"DIALSTACK_S3_SECRET_ACCESS_KEY without the other")
        endpoint = got.get("DIALSTACK_S3_ENDPOINT")
        if endpoint and not re.match(r"^https?://", endpoint):
            errors.append(f"{where}: {name} DIALSTACK_S3_ENDPOINT {endpoint!r} is not http:// or https://")


def check_spool(where, spool, mounts, errors):
    """The spool must be an absolute path on one of the mount targets (the
    containers' root file systems are read-only)."""
    if not spool or not spool.startswith("/"):
        errors.append(f"{where}: {SPOOL_VAR} is {spool!r}, not an absolute path "
                      f"(the default ./data/recordings-spool depends on the working directory)")
        return
    if not any(spool == m or spool.startswith(m.rstrip("/") + "/") for m in mounts):
        errors.append(f"{where}: {SPOOL_VAR} {spool} is on no mounted volume")


def check_compose(compose, errors):
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
    for name, spec in compose["services"].items():
        if "build" not in spec and not image_pinned(spec.get("image", "")):
            errors.append(f"compose: {name} image {spec.get('image')} has no pinned tag")

    def env_of(spec):
        env = spec.get("environment", {})
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
        return {k: (None if v is None else str(v)) for k, v in env.items()}

    check_recording_settings("compose", {svc: {v: env_of(compose["services"][svc]).get(v) for v in RECORDING_VARS}
                                         for svc in RECORDING_SERVICES if svc in compose["services"]}, errors)
    media = compose["services"].get("media-processor")
    if media is not None:
        targets = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in media.get("volumes", [])
                   if (v.get("type") in ("volume", "bind") if isinstance(v, dict) else ":" in v)]
        check_spool("compose: media-processor", env_of(media).get(SPOOL_VAR), targets, errors)


SECRET_VAR = re.compile(r"PASSWORD|TOKEN|SECRET|ENCRYPTION_KEY")


def check_compose_security(compose, errors):
    """Secrets without defaults, ports on loopback, logs without the Docker
    socket, one database account per service."""
    raw = (ROOT / "deploy" / "compose.yml").read_text()
    # ($$ escapes a $ for the container's shell.)
    for m in re.finditer(r"(?<!\$)\$\{([A-Za-z0-9_]+)([^}]*)\}", raw):
        var, rest = m.groups()
        if SECRET_VAR.search(var) and not rest.startswith(":?"):
            # The SIP credentials, alert channels' secrets and the previous
            # key-encryption key (set during a rotation only) are optional.
            if var in ("DIALSTACK_SIP_PASSWORD", "DIALSTACK_ALERT_SMTP_PASSWORD",
                       "DIALSTACK_KEY_ENCRYPTION_KEY_PREVIOUS") and rest == ":-":
                continue
            errors.append(f"compose.yml: ${{{var}{rest}}} gives a secret a default or lets it be empty; "
                          f"use ${{{var}:?message}}")
    for name, spec in compose["services"].items():
        for p in spec.get("ports", []):
            if isinstance(p, dict):
                host_ip, proto = p.get("host_ip"), p.get("protocol", "tcp")
            else:
                text, _, proto = str(p).partition("/")
                parts = text.split(":")
                host_ip = parts[0] if len(parts) == 3 else None
                proto = proto or "tcp"
            if host_ip != "127.0.0.1" and not (name == "media-processor" and proto == "udp"):
                errors.append(f"compose: {name} publishes {p} on {host_ip or 'every address'}, not 127.0.0.1")
        for v in spec.get("volumes", []):
            src = v.get("source", "") if isinstance(v, dict) else str(v).split(":")[0]
            if src.endswith("docker.sock"):
                errors.append(f"compose: {name} mounts the Docker socket")
    for svc in SERVICES:
        spec = compose["services"].get(svc, {})
        labels = spec.get("labels") or {}
        if isinstance(labels, list):
            labels = dict(label.split("=", 1) for label in labels)
        if labels.get(LOG_LABEL) != svc:
            errors.append(f"compose: {svc} lacks the label {LOG_LABEL}={svc} that names it in its log lines")
        options = (spec.get("logging") or {}).get("options") or {}
        if (spec.get("logging") or {}).get("driver", "json-file") != "json-file" or \
                LOG_LABEL not in str(options.get("labels", "")).split(","):
            errors.append(f"compose: {svc}'s json-file logging options do not copy the label {LOG_LABEL} into its lines")
    urls = {}
    for svc in SERVICES:
        env = compose["services"].get(svc, {}).get("environment", {})
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env if "=" in e)
        urls[svc] = env.get("DIALSTACK_DATABASE_URL")
    check_database_accounts("compose", urls, errors)
    mysql_env = compose["services"].get("mysql", {}).get("environment", {})
    for svc, url in urls.items():
        if url and url.startswith("mysql://"):
            u = urlsplit(url)
            key = mysql_password_key(u.username)
            if str(mysql_env.get(key)) != u.password:
                errors.append(f"compose: {svc}'s database password is not the mysql service's {key}, "
                              f"which creates the account")

    promtail_spec = compose["services"].get("promtail", {})
    mounts = [v if isinstance(v, str) else f"{v.get('source')}:{v.get('target')}" for v in promtail_spec.get("volumes", [])]
    if not any(m.split(":")[1] == "/var/lib/docker/containers" for m in mounts if ":" in m):
        errors.append("compose: promtail does not mount /var/lib/docker/containers")
    promtail_path = ROOT / "deploy" / "loki" / "promtail.yml"
    try:
        pt = yaml.safe_load(promtail_path.read_text())
    except yaml.YAMLError as e:
        errors.append(f"{promtail_path}: not YAML: {e}")
        return
    for job in pt.get("scrape_configs", []):
        where = f"{promtail_path.name}: job {job.get('job_name')}"
        if job.get("docker_sd_configs"):
            errors.append(f"{where}: docker_sd_configs needs the Docker socket")
        paths = [t.get("labels", {}).get("__path__", "") for t in job.get("static_configs", [])]
        if not any(p.startswith("/var/lib/docker/containers/") for p in paths):
            errors.append(f"{where}: does not read the container log files")
        stages = job.get("pipeline_stages", [])
        exprs = {k: v for st in stages for k, v in (st.get("json") or {}).get("expressions", {}).items()}
        if exprs.get("service") != f"attrs.{LOG_LABEL}":
            errors.append(f"{where}: `service` does not come from the lines' attrs.{LOG_LABEL}")
        if not any("drop" in st for st in stages):
            errors.append(f"{where}: keeps other containers' lines (no drop stage)")
        if "call_id" not in exprs:
            errors.append(f"{where}: does not parse call_id")


def check_elk(compose, compose_elk, filebeat_path, errors):
    profiled = {n for n, s in compose_elk["services"].items() if s.get("profiles")}
    for name in ("elasticsearch", "filebeat"):
        spec = compose_elk["services"].get(name)
        if spec is None:
            errors.append(f"compose --profile elk: no service {name}")
        elif spec.get("profiles") != ["elk"]:
            errors.append(f"compose: {name} is not in profile elk alone")
    # docker-compose 1.x lists profiled services in a plain `config` too; what
    # keeps them from starting is their `profiles` key.
    started = {n for n, spec in compose["services"].items() if not spec.get("profiles")}
    for name in profiled & started:
        errors.append(f"compose: {name} starts without its profile")
    for name, spec in compose_elk["services"].items():
        if name in profiled:
            continue
        for dep in spec.get("depends_on") or {}:
            if dep in profiled:
                errors.append(f"compose: {name} depends on {dep}, which only a profile starts")

    try:
        fb = yaml.safe_load(open(filebeat_path))
    except yaml.YAMLError as e:
        errors.append(f"{filebeat_path}: not YAML: {e}")
        return
    fb_spec = compose_elk["services"].get("filebeat", {})
    mounts = [v if isinstance(v, str) else f"{v.get('source')}:{v.get('target')}" for v in fb_spec.get("volumes", [])]
    target = "/usr/share/filebeat/filebeat.yml"
    want = pathlib.Path(filebeat_path).resolve()
    if not any(pathlib.Path(m.split(":")[0]).resolve() == want and m.split(":")[1] == target for m in mounts):
        errors.append(f"compose: filebeat does not mount {filebeat_path} at {target}")

    if any(m.split(":")[0].endswith("docker.sock") for m in mounts):
        errors.append("compose: filebeat mounts the Docker socket")
    inputs = fb.get("filebeat.inputs") or []
    if not inputs or not all(any(p.startswith("/var/lib/docker/containers/") for p in i.get("paths", []))
                             for i in inputs):
        errors.append(f"{filebeat_path}: an input does not read the Docker container logs")
    processors = [p for i in inputs for p in i.get("processors", [])] + (fb.get("processors") or [])
    if "docker.sock" in json.dumps(fb) or any("add_docker_metadata" in p for p in processors):
        errors.append(f"{filebeat_path}: uses the Docker socket (add_docker_metadata)")
    by_name = {}
    for p in processors:
        for k, v in p.items():
            by_name.setdefault(k, []).append(v)
    if not by_name.get("decode_json_fields"):
        errors.append(f"{filebeat_path}: lines are not decoded as JSON")
    copied = {f["to"]: f["from"] for c in by_name.get("copy_fields", []) for f in c.get("fields", [])}
    decoded_at_root = any(d.get("target") == "" for d in by_name.get("decode_json_fields", []))
    for field in ("service", "call_id"):
        if field not in copied and not (field == "call_id" and decoded_at_root):
            errors.append(f"{filebeat_path}: does not name the field {field}")
    attr = f"docker.attrs.{LOG_LABEL}"
    if copied.get("service") != attr:
        errors.append(f"{filebeat_path}: service does not come from {attr} (the label in Docker's log line)")
    kept = [d for d in by_name.get("drop_event", [])
            if attr in ((d.get("when") or {}).get("not", {}).get("has_fields") or [])]
    if not kept:
        errors.append(f"{filebeat_path}: no drop_event keeps only the lines that carry {attr}")
    hosts = (fb.get("output.elasticsearch") or {}).get("hosts", [])
    for h in hosts:
        host = urlsplit(h if "://" in h else f"http://{h}").hostname
        if host not in compose_elk["services"]:
            errors.append(f"{filebeat_path}: output host {host} is no compose service")
    if not hosts:
        errors.append(f"{filebeat_path}: no Elasticsearch output")


def pod_workloads(docs):
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def check_pod_security(path, w, errors):
    name = f"{path}: {w['kind']} {w['metadata']['name']}"
    pod = w["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        errors.append(f"{name}: runAsNonRoot is not true")
    if (psc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        errors.append(f"{name}: no RuntimeDefault seccomp profile")
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        errors.append(f"{name}: shares a host namespace")
    for v in pod.get("volumes", []):
        kind = next(k for k in v if k != "name")
        if kind not in RESTRICTED_VOLUMES:
            errors.append(f"{name}: volume {v['name']} of type {kind} is not allowed")
    for c in pod.get("initContainers", []) + pod["containers"]:
        cname = f"{name} container {c['name']}"
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{cname}: allowPrivilegeEscalation is not false")
        if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
            errors.append(f"{cname}: does not drop ALL capabilities")
        if set((sc.get("capabilities") or {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            errors.append(f"{cname}: adds capabilities")
        if sc.get("privileged"):
            errors.append(f"{cname}: privileged")
        if not sc.get("runAsUser", psc.get("runAsUser")):
            errors.append(f"{cname}: no non-zero runAsUser")
        # Read-only where the image allows it; where not, the manifest says
        # false explicitly (with its reason beside it).
        if "readOnlyRootFilesystem" not in sc:
            errors.append(f"{cname}: readOnlyRootFilesystem not decided")
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(kind, {}):
                    errors.append(f"{cname}: no {r} {kind[:-1]}")
        if c in pod["containers"] and w["kind"] != "Job":
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    errors.append(f"{cname}: no {probe}")
        if not image_pinned(c["image"]):
            errors.append(f"{cname}: image {c['image']} has no pinned tag")


def check_references(path, w, configmaps, secrets, errors):
    name = f"{path}: {w['kind']} {w['metadata']['name']}"
    pod = w["spec"]["template"]["spec"]
    for c in pod.get("initContainers", []) + pod["containers"]:
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["key"] not in secrets.get(ref["name"], set()):
                errors.append(f"{name}: reads missing secret key {ref['name']}/{ref['key']}")
            ref = e.get("valueFrom", {}).get("configMapKeyRef")
            if ref and ref["key"] not in configmaps.get(ref["name"], set()):
                errors.append(f"{name}: reads missing config key {ref['name']}/{ref['key']}")
    for v in pod.get("volumes", []):
        if "configMap" in v and v["configMap"]["name"] not in configmaps:
            errors.append(f"{name}: volume {v['name']} names missing ConfigMap {v['configMap']['name']}")
        if "secret" in v and v["secret"]["secretName"] not in secrets:
            errors.append(f"{name}: volume {v['name']} names missing Secret {v['secret']['secretName']}")


def check_statefulset(path, sts, services, errors):
    name = f"{path}: StatefulSet {sts['metadata']['name']}"
    svc = services.get(sts["spec"].get("serviceName"))
    if svc is None or svc["spec"].get("clusterIP") != "None":
        errors.append(f"{name}: no headless Service {sts['spec'].get('serviceName')}")
    elif not selects(svc["spec"].get("selector"), sts["spec"]["template"]["metadata"]["labels"]):
        errors.append(f"{name}: its Service does not select its pods")
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    if not claims:
        errors.append(f"{name}: no volumeClaimTemplates")
    mounted = {m["name"] for c in sts["spec"]["template"]["spec"]["containers"] for m in c.get("volumeMounts", [])}
    for claim in sorted(claims - mounted):
        errors.append(f"{name}: claim {claim} is not mounted")


def policy_admits(policy, pod_labels, client_labels, port):
    spec = policy["spec"]
    if "Ingress" not in spec.get("policyTypes", ["Ingress"]) or not selects(spec["podSelector"], pod_labels):
        return False
    for rule in spec.get("ingress", []):
        peers = rule.get("from")
        if peers and not any("podSelector" in p and "namespaceSelector" not in p and selects(p["podSelector"], client_labels)
                             for p in peers):
            continue
        for p in rule.get("ports") or [{"port": port}]:
            lo = p.get("port")
            hi = p.get("endPort", lo)
            if p.get("protocol", "TCP") == "TCP" and isinstance(lo, int) and lo <= port <= hi:
                return True
    return False


def check_connections(path, docs, services, configmaps_data, secrets_data, errors):
    """URLs that name a Service rendered here: port, policy, passwords."""
    namespaces = {d["metadata"].get("namespace") for d in docs} - {None}
    workloads = pod_workloads(docs)
    clients_of = {key: [w["spec"]["template"]["metadata"]["labels"] for w in workloads
                        if w["metadata"]["name"] in (ENDPOINT_CLIENTS.get(key) or SERVICES)]
                  for src in (configmaps_data, secrets_data) for data in src.values() for key in data}
    urls = {}
    for src in (configmaps_data, secrets_data):
        for cm, data in src.items():
            for key, value in data.items():
                if key.endswith("_URL") and re.match(r"^(mysql|amqp|kafka)://", str(value)):
                    urls[f"{cm}/{key}"] = value
                if key in ENDPOINT_CLIENTS and re.match(r"^https?://", str(value)):
                    urls[f"{cm}/{key}"] = value
    used = set()
    for where, url in sorted(urls.items()):
        clients = clients_of[where.split("/", 1)[1]]
        u = urlsplit(url)
        host, _, rest = u.hostname.partition(".")
        ns = rest.removesuffix(".svc").removesuffix(".svc.cluster.local") if rest else "dialstack"
        if ns not in namespaces:
            continue  # outside this deployment: managed or another namespace
        svc = services.get(host)
        if svc is None:
            errors.append(f"{path}: {where} names Service {host}, which is not rendered")
            continue
        used.add(host)
        port = u.port or {"http": 80, "https": 443}.get(u.scheme)
        if port not in {p["port"] for p in svc["spec"]["ports"]}:
            errors.append(f"{path}: {where} uses port {port}, not one of Service {host}'s")
            continue
        targets = [w["spec"]["template"]["metadata"]["labels"] for w in workloads
                   if selects(svc["spec"].get("selector"), w["spec"]["template"]["metadata"]["labels"])]
        policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
        for t in targets:
            for c in clients:
                if not any(policy_admits(p, t, c, port) for p in policies):
                    errors.append(f"{path}: no NetworkPolicy admits {c.get('app.kubernetes.io/name')} "
                                  f"to {t.get('app.kubernetes.io/name')} on {port}")
        key = URL_PASSWORD_KEYS.get(u.scheme) or (mysql_password_key(u.username) if u.scheme == "mysql" else None)
        if key:
            for sec, data in secrets_data.items():
                if key in data and data[key] != u.password:
                    errors.append(f"{path}: {where} password differs from {sec}/{key}, which creates the account")
    for sts in (d for d in docs if d["kind"] == "StatefulSet"):
        if sts["spec"].get("serviceName") not in used:
            errors.append(f"{path}: no URL points at StatefulSet {sts['metadata']['name']}")


def check_disruption_budgets(path, docs, errors):
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    hpa_min = {h["spec"]["scaleTargetRef"]["name"]: h["spec"].get("minReplicas", 1)
               for h in docs if h["kind"] == "HorizontalPodAutoscaler"}
    replicas = {w["metadata"]["name"]: max(w["spec"].get("replicas", 1), hpa_min.get(w["metadata"]["name"], 0))
                for w in workloads}
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    for pdb in pdbs:
        covered = [w["metadata"]["name"] for w in workloads
                   if selects(pdb["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])]
        if not any(replicas[n] > 1 for n in covered):
            errors.append(f"{path}: PDB {pdb['metadata']['name']} covers no workload with more than one replica: {covered}")
    for w in workloads:
        n = w["metadata"]["name"]
        if replicas[n] > 1 and not any(selects(p["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
                                       for p in pdbs):
            errors.append(f"{path}: {n} runs {replicas[n]} replicas without a PDB")


def check_macvlan(path, docs, deployments, errors):
    nads = {d["metadata"]["name"] for d in docs if d["kind"] == "NetworkAttachmentDefinition"}
    for name, dep in deployments.items():
        attached = dep["spec"]["template"]["metadata"].get("annotations", {}).get("k8s.v1.cni.cncf.io/networks")
        env = {e["name"]: e.get("value") for c in dep["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
        iface = env.get("DIALSTACK_MEDIA_INTERFACE")
        if attached and attached not in nads:
            errors.append(f"{path}: {name} attaches to {attached}, which is not rendered")
        if attached and iface != MEDIA_INTERFACE:
            errors.append(f"{path}: {name} is attached to {attached} but DIALSTACK_MEDIA_INTERFACE is {iface!r}, "
                          f"not {MEDIA_INTERFACE}")
        if iface and not attached:
            errors.append(f"{path}: {name} sets DIALSTACK_MEDIA_INTERFACE without a network attachment")


def pod_env(container, configmaps_data, secrets_data):
    """What the container's environment holds: {var: value}, with ConfigMap
    and Secret references resolved (None where they cannot be; fieldRef
    values are shown as the field path)."""
    env = {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            data = configmaps_data.get(src["configMapRef"]["name"], {})
        else:
            data = secrets_data.get((src.get("secretRef") or {}).get("name"), {})
        env.update({src.get("prefix", "") + k: str(v) for k, v in data.items()})
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
            continue
        vf = e.get("valueFrom", {})
        ref = vf.get("configMapKeyRef") or vf.get("secretKeyRef")
        if ref:
            data = (configmaps_data if "configMapKeyRef" in vf else secrets_data).get(ref["name"], {})
            env[e["name"]] = None if data.get(ref["key"]) is None else str(data[ref["key"]])
        elif "fieldRef" in vf:
            env[e["name"]] = f"<{vf['fieldRef']['fieldPath']}>"
        else:
            env[e["name"]] = None
    return env


def check_k8s_recordings(path, deployments, configmaps_data, secrets_data, errors):
    settings = {}
    for name, dep in sorted(deployments.items()):
        pod = dep["spec"]["template"]
        app = pod["metadata"].get("labels", {}).get("app.kubernetes.io/name")
        if app not in RECORDING_SERVICES:
            continue
        container = next((c for c in pod["spec"]["containers"] if c["name"] == app), pod["spec"]["containers"][0])
        env = pod_env(container, configmaps_data, secrets_data)
        settings[name] = {v: env.get(v) for v in RECORDING_VARS}
        if app == "media-processor":
            mounts = [m["mountPath"] for m in container.get("volumeMounts", []) if not m.get("readOnly")]
            check_spool(f"{path}: {name}", env.get(SPOOL_VAR), mounts, errors)
    check_recording_settings(path, settings, errors)


def decoded_secret(d):
    """A rendered Secret's values as text (kustomize's generator writes `data`
    in base64)."""
    import base64
    out = {k: base64.b64decode(v).decode() for k, v in (d.get("data") or {}).items()}
    out.update(d.get("stringData") or {})
    return out


def read_secret_keys(path, errors):
    """The keys of deploy/k8s/dialstack.env.example, as {key: template}: a
    URL template as written (<KEY> standing for key KEY's value), "<KEY>"
    for the others. Checks its URL templates' accounts."""
    keys, urls = {}, {}
    for n, line in enumerate(open(path), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            errors.append(f"{path}:{n}: not KEY=value")
            continue
        key, _, value = line.partition("=")
        keys[key] = value
        if value and not re.fullmatch(r"[a-z]+://[^\s]*", value):
            errors.append(f"{path}:{n}: {key} has a value; the example holds no secret values, only URL templates")
        if key.endswith("_DATABASE_URL"):
            urls[key] = value.replace("<", "").replace(">", "")
    check_database_accounts(path, urls, errors)
    for key, url in urls.items():
        u = urlsplit(url)
        if u.password != mysql_password_key(u.username):
            errors.append(f"{path}: {key} does not use <{mysql_password_key(u.username)}>, the key that creates its account")
    return {k: v or f"<{k}>" for k, v in keys.items()}


# Secret keys some pod names, over every rendering (for the example's keys).
USED_SECRET_KEYS = set()


def check_production(path, docs, deployments, configmaps_data, errors):
    for d in docs:
        if d["kind"] == "Secret":
            errors.append(f"{path}: ships Secret {d['metadata']['name']}; the operator creates it")
    if configmaps_data.get("dialstack", {}).get("DIALSTACK_ENVIRONMENT") != "production":
        errors.append(f"{path}: ConfigMap dialstack does not set DIALSTACK_ENVIRONMENT=production")
    for name, dep in deployments.items():
        if dep["spec"]["template"]["metadata"].get("labels", {}).get("app.kubernetes.io/name") != "media-processor":
            continue
        for c in dep["spec"]["template"]["spec"]["containers"]:
            trunk = [e for e in c.get("env", []) if e["name"] == "DIALSTACK_SIP_TRUNK"]
            if len(trunk) != 1 or not (trunk[0].get("valueFrom") or {}).get("secretKeyRef"):
                errors.append(f"{path}: {name} does not take DIALSTACK_SIP_TRUNK from the Secret: {trunk}")


def check_trunk(path, deployments, configmaps_data, secrets_data, errors):
    """media-processor refuses sim:// when DIALSTACK_ENVIRONMENT=production."""
    for name, dep in deployments.items():
        if dep["spec"]["template"]["metadata"].get("labels", {}).get("app.kubernetes.io/name") != "media-processor":
            continue
        env = pod_env(dep["spec"]["template"]["spec"]["containers"][0], configmaps_data, secrets_data)
        if (env.get("DIALSTACK_ENVIRONMENT") or "").lower() == "production" and \
                (env.get("DIALSTACK_SIP_TRUNK") or "").startswith("sim://"):
            errors.append(f"{path}: {name} dials sim:// with DIALSTACK_ENVIRONMENT=production (it would not start)")


def check_canaries(path, deployments, errors):
    """A canary runs its stable Deployment's pod, but for image and track."""
    import copy

    def pod(dep):
        t = copy.deepcopy(dep["spec"]["template"])
        t["metadata"].get("labels", {}).pop("dialstack.io/track", None)
        for c in t["spec"]["containers"]:
            c.pop("image", None)
            c["env"] = sorted(c.get("env", []), key=lambda e: e["name"])
        return t

    for name, dep in deployments.items():
        stable = deployments.get(name.removesuffix("-canary"))
        if not name.endswith("-canary") or stable is None:
            continue
        a, b = pod(dep), pod(stable)
        if a == b:
            continue
        diffs = []
        for part in ("metadata", "spec"):
            for k in sorted(set(a[part]) | set(b[part])):
                if a[part].get(k) != b[part].get(k):
                    diffs.append(f"{part}.{k}")
        errors.append(f"{path}: {name}'s pod differs from {stable['metadata']['name']}'s beyond the image: {diffs}")
        track = dep["spec"]["template"]["metadata"].get("labels", {}).get("dialstack.io/track")
        if track != "canary":
            errors.append(f"{path}: {name}'s pods are not labelled dialstack.io/track=canary")


def check_k8s(path, errors, external_keys=None, production=False):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    configmaps_data = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    secrets_data = {d["metadata"]["name"]: decoded_secret(d) for d in docs if d["kind"] == "Secret"}
    configmaps = {k: set(v) for k, v in configmaps_data.items()}
    secrets = {k: set(v) for k, v in secrets_data.items()}
    for d in docs:
        if d["kind"] not in ("Namespace",) and not d["metadata"].get("namespace"):
            errors.append(f"{path}: {d['kind']} {d['metadata']['name']} has no namespace (it would land in the "
                          f"kubeconfig's current one)")
    for name, data in secrets_data.items():
        for key, value in data.items():
            if re.search(r"change-me|^guest$|dialstack-dev", value):
                errors.append(f"{path}: Secret {name} key {key} holds a placeholder")
    # The operator's Secret: its keys are known, its values are not.
    # The URL templates stand for its values, so that connections are
    # checked as for a rendered Secret.
    rendered = [n for n in secrets if n == SECRET_NAME or n.startswith(SECRET_NAME + "-")]
    if not rendered and external_keys is not None:
        secrets[SECRET_NAME] = set(external_keys)
        secrets_data[SECRET_NAME] = dict(external_keys)
    for w in pod_workloads(docs):
        for c in w["spec"]["template"]["spec"].get("initContainers", []) + w["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref and (ref["name"] == SECRET_NAME or ref["name"].startswith(SECRET_NAME + "-")):
                    USED_SECRET_KEYS.add(ref["key"])
        for v in w["spec"]["template"]["spec"].get("volumes", []):
            for item in (v.get("secret") or {}).get("items", []):
                USED_SECRET_KEYS.add(item["key"])
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
        for var in sorted(required_vars(svc) - keys):
            errors.append(f"{path}: {svc} does not set {var}")
        exposed = {(p["containerPort"], p.get("protocol", "TCP").lower()) for p in container.get("ports", [])}
        for port in sorted(ports(svc) - exposed):
            errors.append(f"{path}: {svc} does not expose {port}")
        if svc not in services:
            errors.append(f"{path}: no Service {svc}")
    for w in pod_workloads(docs):
        check_pod_security(path, w, errors)
        check_references(path, w, configmaps, secrets, errors)
    check_k8s_recordings(path, deployments, configmaps_data, secrets_data, errors)
    for sts in (d for d in docs if d["kind"] == "StatefulSet"):
        check_statefulset(path, sts, services, errors)
    check_connections(path, docs, services, configmaps_data, secrets_data, errors)
    check_disruption_budgets(path, docs, errors)
    check_macvlan(path, docs, deployments, errors)
    check_trunk(path, deployments, configmaps_data, secrets_data, errors)
    check_canaries(path, deployments, errors)
    if production:
        check_production(path, docs, deployments, configmaps_data, errors)
    urls = {}
    for name, dep in deployments.items():
        app = dep["spec"]["template"]["metadata"].get("labels", {}).get("app.kubernetes.io/name")
        if app in SERVICES and not name.endswith("-canary"):
            env = pod_env(dep["spec"]["template"]["spec"]["containers"][0], configmaps_data, secrets_data)
            urls[app] = env.get("DIALSTACK_DATABASE_URL")
    check_database_accounts(path, urls, errors)
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


def main():
    args = sys.argv[1:]
    elk, secret_keys, production = None, None, set()
    errors = []
    while args and args[0].startswith("--"):
        if args[0] == "--elk":
            elk, args = args[1:3], args[3:]
        elif args[0] == "--secret-keys":
            secret_keys, args = read_secret_keys(args[1], errors), args[2:]
            secret_names = set(secret_keys)
        elif args[0] == "--production":
            production.add(args[1])
            args = args[2:]
        else:
            sys.exit(f"unknown option {args[0]}")
    compose = yaml.safe_load(open(args[0]))
    check_compose(compose, errors)
    check_compose_security(compose, errors)
    if elk:
        check_elk(compose, yaml.safe_load(open(elk[0])), elk[1], errors)
    for path in args[1:]:
        check_k8s(path, errors, secret_keys, path in production)
    for path in sorted(production - set(args[1:])):
        errors.append(f"--production {path} is not among the Kubernetes files")
    if secret_keys is not None:
        for key in sorted(secret_names - USED_SECRET_KEYS):
            errors.append(f"dialstack.env.example lists {key}, which no pod reads")
        for key in sorted(USED_SECRET_KEYS - secret_names):
            errors.append(f"a pod reads Secret key {key}, which dialstack.env.example does not list")

    for e in errors:
        print(e)
    if errors:
        sys.exit(1)
    print(f"deployment files agree with the services ({len(SERVICES)} services, {len(args)} files"
          f"{', elk profile' if elk else ''})")


if __name__ == "__main__":
    main()
