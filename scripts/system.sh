#!/usr/bin/env bash
# Debian packages and daemons the test suite uses: the Docker engine and debootstrap.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
if ! command -v dockerd >/dev/null 2>&1; then apt_install docker.io; fi
apt_install debootstrap
start_docker
