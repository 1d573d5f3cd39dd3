#!/usr/bin/env bash
# Validates the deployment examples; exits non-zero on the first kind of problem found.
#
#   scripts/validate-deploy.sh [DEPLOY_DIR]      (default: examples/deploy)
#
# 1. DEPLOY_DIR/kubernetes/*.yaml against the Kubernetes JSON schemas of the oldest and the
#    newest version we support, strictly (an unknown field is an error, and so is a kind with
#    no schema). The validator is PyPI's `kubernetes-validate`, which bundles the schemas:
#    it is installed once into .venv-deploy/ (the only step that needs the network) and
#    validates offline.
# 2. What the schemas cannot see: labels and selectors agree, probes and Service point at
#    declared ports that match the config's listeners, the HPA targets the Deployment, and
#    terminationGracePeriodSeconds exceeds the preStop sleep plus fibhost's shutdown-timeout
#    (and systemd's TimeoutStopSec exceeds shutdown-timeout).
# 3. DEPLOY_DIR/nginx.conf with `nginx -t`, rewritten to run unprivileged from a temporary
#    prefix (pid, logs, temp paths there; listen and upstream addresses on 127.0.0.1).
# 4. DEPLOY_DIR's systemd units (*.service, *.socket) with `systemd-analyze verify`, and the
#    socket units' FileDescriptorName (http, admin or stats).
#
# Exit status: 0 valid, 1 invalid (or a tool is missing), 3 the validator could not be
# installed (the registry is unreachable); the e2e test skips only on 3, and never in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
deploy=$(cd "${1:-examples/deploy}" && pwd)

KUBERNETES_VALIDATE=1.37.0
# Oldest and newest schema sets bundled with that release.
KUBERNETES_VERSIONS=(1.25.0 1.37.0)
venv=$root/.venv-deploy
stamp=$venv/.installed-kubernetes-validate-$KUBERNETES_VALIDATE

# --- the validator ----------------------------------------------------------------------
if [[ ! -f $stamp ]]; then
    echo "validate-deploy: installing kubernetes-validate $KUBERNETES_VALIDATE into .venv-deploy/"
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
        else
            echo "validate-deploy: python3 with the venv module is needed (Debian: apt-get install python3-venv)" >&2
            exit 1
        fi
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    if ! "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE" "tomli>=2; python_version < '3.11'"; then
        # Tell "the registry is unreachable" (exit 3, a test may skip) from any other
        # failure (exit 1): ask the same index, through pip's own configuration.
        if "$venv/bin/pip" index versions kubernetes-validate --retries 0 --timeout 15 >/dev/null 2>&1; then
            rm -rf "$venv"
            echo "validate-deploy: installing kubernetes-validate failed although PyPI answers" >&2
            exit 1
        fi
        rm -rf "$venv"
        echo "validate-deploy: cannot install kubernetes-validate: no package registry reachable" >&2
        exit 3
    fi
    touch "$stamp"
fi

# --- 1. schemas -------------------------------------------------------------------------
manifests=("$deploy"/kubernetes/*.yaml)
[[ -e ${manifests[0]} ]] || { echo "validate-deploy: no manifests in $deploy/kubernetes" >&2; exit 1; }
args=()
for version in "${KUBERNETES_VERSIONS[@]}"; do args+=(-k "$version"); done
# --quiet prints only problems. A kind without a schema is only a WARN to the validator,
# which would let a misspelt `kind:` through; any output at all is a failure here.
if ! report=$("$venv/bin/kubernetes-validate" --strict --quiet "${args[@]}" "${manifests[@]}" 2>&1) \
    || [[ -n $report ]]; then
    echo "$report" >&2
    echo "validate-deploy: FAILED: Kubernetes manifests do not match the schemas" >&2
    exit 1
fi
echo "validate-deploy: ${#manifests[@]} manifests valid against Kubernetes ${KUBERNETES_VERSIONS[*]}"

# --- 2. cross-references ----------------------------------------------------------------
"$venv/bin/python" - "$deploy" "$root/examples/fibhost.toml" <<'PY'
import glob, os, re, shlex, sys

import yaml

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

deploy, default_toml = sys.argv[1], sys.argv[2]
problems = []


def check(ok, message):
    if not ok:
        problems.append(message)


def subset(small, big):
    return bool(small) and all(big.get(k) == v for k, v in small.items())


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


kinds = {}
for path in sorted(glob.glob(os.path.join(deploy, "kubernetes", "*.yaml"))):
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if doc:
                kinds.setdefault(doc["kind"], []).append(doc)

deployments = kinds.get("Deployment", [])
if len(deployments) != 1:
    sys.exit(f"validate-deploy: expected one Deployment, found {len(deployments)}")
deployment = deployments[0]
pod = deployment["spec"]["template"]
labels = pod["metadata"].get("labels", {})
spec = pod["spec"]
containers = [c for c in spec["containers"] if c["name"] == "fibhost"]
if len(containers) != 1:
    sys.exit("validate-deploy: the Deployment has no container named `fibhost`")
container = containers[0]
ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
numbers = set(ports.values())

check(subset(deployment["spec"]["selector"].get("matchLabels", {}), labels),
      "Deployment: selector does not match the pod template's labels")

# The config file the container is started with, read from the ConfigMap that backs it.
config = {}
cli = container.get("args", [])
if "--config" in cli:
    config_path = cli[cli.index("--config") + 1]
    mount = next((m for m in container.get("volumeMounts", [])
                  if config_path.startswith(m["mountPath"].rstrip("/") + "/")), None)
    check(mount is not None, f"Deployment: no volume mounted at `{config_path}`")
    if mount:
        volume = next((v for v in spec.get("volumes", []) if v["name"] == mount["name"]), {})
        name = volume.get("configMap", {}).get("name")
        key = config_path[len(mount["mountPath"].rstrip("/")) + 1:]
        maps = [m for m in kinds.get("ConfigMap", []) if m["metadata"]["name"] == name]
        check(len(maps) == 1 and key in maps[0].get("data", {}),
              f"Deployment: `{config_path}` is not a key of a ConfigMap here")
        if maps and key in maps[0].get("data", {}):
            try:
                config = tomllib.loads(maps[0]["data"][key])
            except tomllib.TOMLDecodeError as e:
                problems.append(f"ConfigMap {name}: `{key}` is not valid TOML: {e}")
if config:
    check(port_of(config.get("listen", "127.0.0.1:8080")) == ports.get("http"),
          "config `listen` port differs from the container port named `http`")
    check("admin-listen" in config and port_of(config["admin-listen"]) == ports.get("admin"),
          "config `admin-listen` port differs from the container port named `admin`")
    check(config.get("listen", "").startswith("0.0.0.0:"),
          "config `listen` must be 0.0.0.0:PORT for the Service to reach it")
shutdown = float(config.get("shutdown-timeout", 30))


def probe_port(probe):
    port = probe.get("httpGet", {}).get("port")
    return ports.get(port) if isinstance(port, str) else port


for kind, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                   ("startupProbe", "/healthz")):
    probe = container.get(kind)
    if probe is None and kind == "startupProbe":
        continue
    check(probe is not None and probe.get("httpGet", {}).get("path") == path,
          f"Deployment: {kind} must be an httpGet of {path}")
    if probe:
        check(probe_port(probe) == ports.get("admin"),
              f"Deployment: {kind} must probe the admin port")

pre_stop = container.get("lifecycle", {}).get("preStop", {})
if "sleep" in pre_stop:
    sleep = pre_stop["sleep"]["seconds"]
else:
    command = " ".join(shlex.quote(str(a)) for a in pre_stop.get("exec", {}).get("command", []))
    match = re.search(r"sleep\s+(\d+(?:\.\d+)?)", command)
    sleep = float(match.group(1)) if match else None
check(sleep is not None, "Deployment: preStop must sleep, so endpoints update before SIGTERM")
grace = spec.get("terminationGracePeriodSeconds", 30)
check(sleep is None or grace > sleep + shutdown,
      f"Deployment: terminationGracePeriodSeconds ({grace}) must exceed the preStop sleep "
      f"({sleep:g}) plus shutdown-timeout ({shutdown:g})")
check(spec.get("securityContext", {}).get("runAsNonRoot") is True,
      "Deployment: the pod must set runAsNonRoot")
check("requests" in container.get("resources", {}) and "limits" in container["resources"],
      "Deployment: the container needs resource requests and limits")

for service in kinds.get("Service", []):
    name = service["metadata"]["name"]
    check(subset(service["spec"].get("selector", {}), labels),
          f"Service {name}: selector does not match the pod labels")
    for p in service["spec"].get("ports", []):
        target = p.get("targetPort", p["port"])
        check(target in ports if isinstance(target, str) else target in numbers,
              f"Service {name}: targetPort `{target}` is not a container port")
        check(target != "admin" and target != ports.get("admin"),
              f"Service {name}: the admin port must not be exposed through the Service")

for hpa in kinds.get("HorizontalPodAutoscaler", []):
    name = hpa["metadata"]["name"]
    ref = hpa["spec"]["scaleTargetRef"]
    check(ref["kind"] == "Deployment" and ref["name"] == deployment["metadata"]["name"],
          f"HorizontalPodAutoscaler {name}: scaleTargetRef is not the Deployment")
    uses_cpu = any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"].get("metrics", []))
    check(not uses_cpu or "cpu" in container.get("resources", {}).get("requests", {}),
          f"HorizontalPodAutoscaler {name}: CPU utilization needs a CPU request")
    check("replicas" not in deployment["spec"],
          "Deployment: with an HPA, leave `replicas` out (apply would reset the HPA's count)")

for pdb in kinds.get("PodDisruptionBudget", []):
    check(subset(pdb["spec"].get("selector", {}).get("matchLabels", {}), labels),
          f"PodDisruptionBudget {pdb['metadata']['name']}: selector does not match the pod labels")

unit = os.path.join(deploy, "fibhost.service")
if os.path.exists(unit):
    with open(default_toml, "rb") as f:
        default_shutdown = float(tomllib.load(f).get("shutdown-timeout", 30))
    with open(unit) as f:
        match = re.search(r"^TimeoutStopSec=(\d+)s?$", f.read(), re.M)
    check(match is not None and int(match.group(1)) > default_shutdown,
          f"fibhost.service: TimeoutStopSec must exceed shutdown-timeout ({default_shutdown:g})")

if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit("validate-deploy: FAILED: the manifests do not fit together")
print("validate-deploy: manifests consistent (selectors, ports, probes, drain timing)")
PY

# --- 3. nginx -t ------------------------------------------------------------------------
nginx=$(command -v nginx || echo /usr/sbin/nginx)
if [[ ! -x $nginx ]]; then
    echo "validate-deploy: nginx is needed to check nginx.conf (scripts/setup.sh --test installs it)" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$deploy/nginx.conf" "$tmp" >"$tmp/nginx.conf" <<'PY'
import re, socket, sys

source, prefix = sys.argv[1], sys.argv[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


upstream_port = 18080
for line in open(source):
    stripped = line.strip()
    if stripped.startswith("user "):
        # Only root may switch users; the check runs as whoever calls it. A comment rather
        # than nothing keeps nginx's line numbers those of the original file.
        line = "# " + line
    line = re.sub(r"^(\s*pid\s+)\S+;", rf"\g<1>{prefix}/nginx.pid;", line)
    line = re.sub(r"^(\s*(error|access)_log\s+)[^\s;]+", rf"\g<1>{prefix}/\g<2>.log", line)
    line = re.sub(r"^(\s*listen\s+)[^;]+;", rf"\g<1>127.0.0.1:{free_port()};", line)
    if re.match(r"\s*server\s+[^\s;]+:\d+", line):
        upstream_port += 1
        line = re.sub(r"^(\s*server\s+)[^\s;]+", rf"\g<1>127.0.0.1:{upstream_port}", line)
    if re.match(r"\s*http\s*\{\s*$", line):
        # On the same line, again to keep the line numbers.
        line = line.rstrip("\n") + "".join(
            f" {kind}_temp_path {prefix}/{kind}_temp;"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        ) + "\n"
    sys.stdout.write(line)
PY
if ! out=$("$nginx" -t -q -p "$tmp/" -c "$tmp/nginx.conf" -e "$tmp/startup-error.log" 2>&1); then
    echo "$out" >&2
    echo "validate-deploy: FAILED: nginx -t rejects $deploy/nginx.conf (same line numbers)" >&2
    exit 1
fi
echo "validate-deploy: nginx.conf passes nginx -t"

# --- 4. systemd units -------------------------------------------------------------------
# `systemd-analyze verify` (Debian's systemd) on the service and socket units, with ExecStart
# pointed at an executable that exists here; any complaint (an unknown key, a bad value) fails.
# fibhost knows the socket names `http`, `admin` and `stats`.
units=("$deploy"/*.service "$deploy"/*.socket)
if [[ -e ${units[0]} ]]; then
    analyze=$(command -v systemd-analyze || true)
    if [[ -z $analyze ]]; then
        echo "validate-deploy: systemd-analyze is needed to check the systemd units (scripts/setup.sh --test installs systemd)" >&2
        exit 1
    fi
    mkdir "$tmp/units"
    for unit in "${units[@]}"; do
        [[ -e $unit ]] || continue
        sed "s#^ExecStart=/usr/local/bin/fibhost#ExecStart=$(command -v true)#" "$unit" >"$tmp/units/${unit##*/}"
        name=$(sed -n 's/^FileDescriptorName=//p' "$unit")
        if [[ $unit == *.socket && ! $name =~ ^(http|admin|stats)$ ]]; then
            echo "validate-deploy: FAILED: ${unit##*/}: FileDescriptorName must be http, admin or stats (is \`$name\`)" >&2
            exit 1
        fi
    done
    if ! out=$(cd "$tmp/units" && "$analyze" verify --man=no ./* 2>&1) || [[ -n $out ]]; then
        echo "$out" >&2
        echo "validate-deploy: FAILED: systemd-analyze verify rejects the units in $deploy" >&2
        exit 1
    fi
    echo "validate-deploy: systemd units pass systemd-analyze verify"
fi
