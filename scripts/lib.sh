#!/usr/bin/env bash
# Helpers shared by the setup scripts.
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "system: installing ${missing[*]}" >&2
  as_root apt-get update -q >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}
start_docker() {
  if docker info >/dev/null 2>&1; then return 0; fi
  echo "system: starting the Docker daemon" >&2
  as_root sh -c 'nohup dockerd >/var/log/ncf-tandem-dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && return 0; sleep 1; done
  echo "system: the Docker daemon did not answer within 60 s; see /var/log/ncf-tandem-dockerd.log" >&2
  return 1
}
