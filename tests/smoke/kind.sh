#!/usr/bin/env bash
# Kind smoke test: both images built and loaded into a kind cluster, then the chart
# installed with ci/kind-values.yaml (CPU, in-cluster GCS emulator, synthetic-small)
# once per workload: `jobs` (two Jobs) and `jobset` (one JobSet, after installing the
# JobSet controller's released manifest). Each run is waited for, checked with
# `helm test` (ncf-status: passes only when the run is done) and uninstalled.
# Fails as soon as a Job or the JobSet fails; dumps logs and descriptions on failure.
#
# Needs docker, kind (0.24 or later: kindnet enforces the chart's NetworkPolicies),
# kubectl and helm on PATH. Environment:
#   KIND_CLUSTER     cluster name (default ncf-smoke); created if missing
#   KEEP_CLUSTER     1 keeps a cluster this script created (default: deleted)
#   TIMEOUT_S        seconds to wait for each run (default 1500)
#   NAMESPACE        namespace prefix (default ncf-smoke): <prefix>-jobs, <prefix>-jobset
#   WORKLOADS        which to run (default "jobs jobset")
#   JOBSET_VERSION   JobSet release to install (default v0.12.0, the CRD tests/data/jobset/ pins)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

cluster="${KIND_CLUSTER:-ncf-smoke}"
namespace_prefix="${NAMESPACE:-ncf-smoke}"
release=ncf
timeout_s="${TIMEOUT_S:-1500}"
workloads="${WORKLOADS:-jobs jobset}"
jobset_version="${JOBSET_VERSION:-v0.12.0}"
values=charts/ncf-tandem/ci/kind-values.yaml
chart=charts/ncf-tandem
fullname="$release-ncf-tandem"

# The image names and tags come from the kind profile, so the script and the
# values cannot disagree. They are never "latest": kind nodes cannot pull our
# images, the profile says pullPolicy Never, and `kind load` needs a fixed tag.
value() { python3 -c 'import sys, yaml; v = yaml.safe_load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v = v[k]
print(v)' "$values" "$1"; }
gen_image="$(value generator.image.repository):$(value generator.image.tag)"
train_image="$(value trainer.image.repository):$(value trainer.image.tag)"
emulator_image="fsouza/fake-gcs-server:$(python3 -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["gcsEmulator"]["image"]["tag"])' "$chart/values.yaml")"

log() { echo "kind-smoke: $*" >&2; }

created=0
cleanup() {
  if [[ "$created" = 1 && "${KEEP_CLUSTER:-0}" != 1 ]]; then
    log "deleting kind cluster $cluster"
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

dump() {  # NAMESPACE
  local ns="$1" pod
  log "---- diagnostics ($ns) ----"
  kubectl -n "$ns" get all,events,networkpolicies -o wide || true
  kubectl -n "$ns" get jobsets -o yaml 2>/dev/null || true
  kubectl -n "$ns" describe jobs || true
  kubectl -n "$ns" describe pods || true
  for pod in $(kubectl -n "$ns" get pods -o name 2>/dev/null); do
    echo "==== logs of $pod ===="
    kubectl -n "$ns" logs "$pod" --all-containers --prefix --tail=300 || true
    kubectl -n "$ns" logs "$pod" --all-containers --prefix --previous --tail=100 2>/dev/null || true
  done
}

true_conditions() {  # KIND NAME NAMESPACE: the object's conditions that are True, one a line
  kubectl -n "$3" get "$1" "$2" -o \
    jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}{"\n"}{end}' 2>/dev/null || true
}

wait_for_jobs() {  # NAMESPACE: Complete on both passes, Failed on either fails at once
  local ns="$1" deadline done_count job state
  deadline=$(( $(date +%s) + timeout_s ))
  while :; do
    done_count=0
    for job in "$fullname-generator" "$fullname-trainer"; do
      state="$(true_conditions job "$job" "$ns" | grep -E '^(Complete|Failed)$' | head -n1 || true)"
      case "$state" in
        Failed) log "job $job failed"; return 1 ;;
        Complete) done_count=$((done_count + 1)) ;;
        *) ;;
      esac
    done
    if [[ "$done_count" = 2 ]]; then log "both Jobs completed"; return 0; fi
    if [[ "$(date +%s)" -ge "$deadline" ]]; then log "timed out after ${timeout_s}s"; return 1; fi
    sleep 10
  done
}

wait_for_jobset() {  # NAMESPACE: Completed (the trainer's Job completed) passes, Failed fails at once
  local ns="$1" deadline state
  deadline=$(( $(date +%s) + timeout_s ))
  while :; do
    state="$(true_conditions jobset "$fullname" "$ns" | grep -E '^(Completed|Failed)$' | head -n1 || true)"
    case "$state" in
      Failed) log "jobset $fullname failed"; return 1 ;;
      Completed) log "jobset $fullname completed"; return 0 ;;
      *) ;;
    esac
    if [[ "$(date +%s)" -ge "$deadline" ]]; then log "timed out after ${timeout_s}s"; return 1; fi
    sleep 10
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

for workload in $workloads; do
  ns="$namespace_prefix-$workload"
  case "$workload" in
    jobs) ;;
    jobset)
      log "installing the JobSet controller $jobset_version"
      kubectl apply --server-side -f "https://github.com/kubernetes-sigs/jobset/releases/download/$jobset_version/manifests.yaml"
      kubectl -n jobset-system wait --for=condition=Available --timeout=300s deployment/jobset-controller-manager
      ;;
    *) log "unknown workload $workload (jobs or jobset)"; exit 2 ;;
  esac

  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
  log "helm install $release ($values, workload $workload) in $ns"
  # The JobSet webhook may take a moment to answer after its Deployment is Available.
  installed=0
  for _ in 1 2 3 4 5 6; do
    if helm upgrade --install "$release" "$chart" -n "$ns" -f "$values" --set "workload=$workload" --wait=false; then
      installed=1; break
    fi
    sleep 10
  done
  if [[ "$installed" != 1 ]]; then dump "$ns"; exit 1; fi

  if [[ "$workload" = jobset ]]; then
    wait_for_jobset "$ns" || { dump "$ns"; exit 1; }
  else
    wait_for_jobs "$ns" || { dump "$ns"; exit 1; }
  fi

  log "helm test $release ($workload)"
  if ! helm test "$release" -n "$ns" --logs --timeout 10m; then
    dump "$ns"; exit 1
  fi
  # Free the node for the next workload.
  helm uninstall "$release" -n "$ns" --wait --timeout 5m || true
  log "$workload passed"
done
log "passed"
