#!/usr/bin/env bash
# The whole test suite, on a fresh machine: venv, pip packages, Docker engine, debootstrap.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source "$repo/scripts/system.sh"
source "$repo/scripts/bootstrap.sh" dev
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then echo "test: pytest collected no tests; that is a failure" >&2; exit 1; fi
exit "$rc"
