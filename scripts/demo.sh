#!/usr/bin/env bash
# The main job on a laptop: the trainer starts the generator as a child process,
# both share a local run directory, and synthetic-small is trained end to end.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/bootstrap.sh" train-cpu
run_dir="${NCF_DEMO_DIR:-$repo/runs/demo-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$(dirname "$run_dir")"
echo "demo: run directory $run_dir" >&2
exec ncf-trainer --data-dir "$run_dir" --dataset synthetic-small --epochs "${NCF_DEMO_EPOCHS:-5}" --spawn-generator "$@"
