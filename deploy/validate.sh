#!/usr/bin/env bash
# Offline checks of deploy/ (no Docker engine or cluster needed):
#  - Prometheus config and alert rules with promtool;
#  - Kubernetes manifests against the Kubernetes schemas (kubernetes-validate,
#    which bundles them: no network);
#  - docker-compose.yml and Grafana dashboards parse; the dashboards' and rules'
#    PromQL names only metrics the server exports (crates/server/tests/deploy_assets.rs,
#    run by the test suite, checks the names against baton_server::metrics::FAMILIES).
# Needs promtool (Debian package prometheus) and kubernetes-validate (PyPI).
set -euo pipefail
cd "$(dirname "$0")"
K8S_VERSION="${K8S_VERSION:-1.30.0}"

missing=0
for tool in promtool kubernetes-validate python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "deploy/validate.sh: $tool is not installed (see .ci/run)" >&2
    missing=1
  fi
done
[ "$missing" = 0 ] || exit 1

echo "-- promtool check config / rules"
promtool check config prometheus/prometheus.yml
promtool check rules prometheus/alerts.yml

echo "-- kubernetes manifests (schemas of Kubernetes $K8S_VERSION, strict)"
kubernetes-validate --quiet --strict -k "$K8S_VERSION" k8s/*.yaml
echo "   $(ls k8s/*.yaml | wc -l) files valid"

echo "-- docker-compose.yml and dashboards parse"
python3 - <<'PY'
import json, sys, glob
import yaml  # PyYAML, a dependency of kubernetes-validate
doc = yaml.safe_load(open("docker-compose.yml"))
need = {"postgres", "redis", "prometheus", "grafana", "agent-echo"}
missing = need - set(doc["services"])
if missing or not any(s.startswith("orchestrator") for s in doc["services"]):
    sys.exit(f"docker-compose.yml lacks services: {sorted(missing) or 'orchestrator'}")
print(f"   docker-compose.yml: {len(doc['services'])} services")
for path in sorted(glob.glob("grafana/dashboards/*.json")):
    d = json.load(open(path))
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    if not exprs:
        sys.exit(f"{path}: no queries")
    print(f"   {path}: {len(d['panels'])} panels, {len(exprs)} queries")
PY
echo "-- Dockerfiles: multi-stage, non-root runtime"
python3 - <<'PY'
import glob, sys
for path in sorted(glob.glob("docker/Dockerfile.*")):
    lines = [l.strip() for l in open(path) if l.strip() and not l.lstrip().startswith("#")]
    stages = [i for i, l in enumerate(lines) if l.upper().startswith("FROM ")]
    if len(stages) < 2:
        sys.exit(f"{path}: not a multi-stage build")
    final = lines[stages[-1]:]
    users = [l.split(None, 1)[1] for l in final if l.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        sys.exit(f"{path}: the runtime stage must run as a non-root USER")
    if not any("--from=build" in l for l in final if l.upper().startswith("COPY")):
        sys.exit(f"{path}: the runtime stage must copy the binary from the build stage")
    print(f"   {path}: {len(stages)} stages, runs as {users[-1]}")
PY
echo "deploy/ is valid"
