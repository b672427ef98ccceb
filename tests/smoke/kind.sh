#!/usr/bin/env bash
# Kind smoke test: both images built and loaded into a kind cluster, the chart
# installed with ci/kind-values.yaml (CPU, in-cluster GCS emulator,
# synthetic-small), both Jobs waited for, then `helm test`.
# Fails as soon as either Job fails; dumps logs and descriptions on failure.
#
# Needs docker, kind, kubectl and helm on PATH. Environment:
#   KIND_CLUSTER   cluster name (default ncf-smoke); created if missing
#   KEEP_CLUSTER   1 keeps a cluster this script created (default: deleted)
#   TIMEOUT_S      seconds to wait for both Jobs (default 1500)
#   NAMESPACE      (default ncf-smoke)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

cluster="${KIND_CLUSTER:-ncf-smoke}"
namespace="${NAMESPACE:-ncf-smoke}"
release=ncf
timeout_s="${TIMEOUT_S:-1500}"
values=charts/ncf-tandem/ci/kind-values.yaml
chart=charts/ncf-tandem

# The image names and tags come from the kind profile, so the script and the
# values cannot disagree. They are never "latest": kind nodes cannot pull our
# images, the profile says pullPolicy Never, and `kind load` needs a fixed tag.
value() { python3 -c 'import sys, yaml; v = yaml.safe_load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v = v[k]
print(v)' "$values" "$1"; }
gen_image="$(value generator.image.repository):$(value generator.image.tag)"
train_image="$(value trainer.image.repository):$(value trainer.image.tag)"
emulator_image="fsouza/fake-gcs-server:$(python3 -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["gcsEmulator"]["image"]["tag"])' "$chart/values.yaml")"
jobs=("$release-ncf-tandem-generator" "$release-ncf-tandem-trainer")

log() { echo "kind-smoke: $*" >&2; }

created=0
cleanup() {
  if [ "$created" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    log "deleting kind cluster $cluster"
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

dump() {
  log "---- diagnostics ----"
  kubectl -n "$namespace" get all,events -o wide || true
  for job in "${jobs[@]}"; do
    kubectl -n "$namespace" describe job "$job" || true
  done
  kubectl -n "$namespace" describe pods || true
  for pod in $(kubectl -n "$namespace" get pods -o name 2>/dev/null); do
    echo "==== logs of $pod ===="
    kubectl -n "$namespace" logs "$pod" --all-containers --prefix --tail=300 || true
    kubectl -n "$namespace" logs "$pod" --all-containers --prefix --previous --tail=100 2>/dev/null || true
  done
}

if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  log "creating kind cluster $cluster"
  kind create cluster --name "$cluster" --wait 120s
  created=1
fi
kubectl config use-context "kind-$cluster" >/dev/null

log "building $gen_image and $train_image"
docker build -f Dockerfile.gen -t "$gen_image" .
docker build -f Dockerfile.train --build-arg TRAIN_EXTRA=train-cpu -t "$train_image" .
kind load docker-image --name "$cluster" "$gen_image" "$train_image"
# The emulator is pulled by the node unless it is already local.
if docker image inspect "$emulator_image" >/dev/null 2>&1 || docker pull "$emulator_image"; then
  kind load docker-image --name "$cluster" "$emulator_image"
fi

kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f -
log "helm install $release ($values)"
if ! helm upgrade --install "$release" "$chart" -n "$namespace" -f "$values" --wait=false; then
  dump; exit 1
fi

# Wait for both Jobs: Complete on both passes, Failed on either fails at once.
job_state() {  # prints Complete, Failed or nothing
  kubectl -n "$namespace" get job "$1" -o \
    jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}{"\n"}{end}' 2>/dev/null \
    | grep -E '^(Complete|Failed)$' | head -n1 || true
}
deadline=$(( $(date +%s) + timeout_s ))
while :; do
  done_count=0
  for job in "${jobs[@]}"; do
    state="$(job_state "$job")"
    case "$state" in
      Failed) log "job $job failed"; dump; exit 1 ;;
      Complete) done_count=$((done_count + 1)) ;;
    esac
  done
  if [ "$done_count" = "${#jobs[@]}" ]; then log "both Jobs completed"; break; fi
  if [ "$(date +%s)" -ge "$deadline" ]; then log "timed out after ${timeout_s}s"; dump; exit 1; fi
  sleep 10
done

log "helm test $release"
if ! helm test "$release" -n "$namespace" --logs --timeout 5m; then
  dump; exit 1
fi
log "passed"
