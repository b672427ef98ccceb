#!/usr/bin/env bash
# Creates .venv and installs the project with the given extras, once per pyproject.toml change.
# Usage: bash scripts/bootstrap.sh EXTRAS     (e.g. "train-cpu" or "dev"), then
#        source .venv/bin/activate; the other scripts source it and get .venv on PATH.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then set -euo pipefail; fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:?usage: bootstrap.sh EXTRAS}"
venv="$repo/.venv"
source "$repo/scripts/lib.sh"
stamp="$venv/.installed-$extras-$(sha256sum "$repo/pyproject.toml" | cut -c1-16)"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" 2>/dev/null || {
    echo "bootstrap: python3 -m venv failed; installing Debian's python3-venv" >&2
    apt_install python3-venv
    python3 -m venv "$venv"
  }
fi
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing ncf-tandem[$extras] into .venv (first run takes a few minutes)" >&2
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet -e "${repo}[${extras}]"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
