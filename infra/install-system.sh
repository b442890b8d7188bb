#!/usr/bin/env bash
# Installs the Debian packages Talaria and its tests need, only those missing.
set -euo pipefail

packages=(
  openjdk-17-jre-headless maven           # the local Kafka broker
  dcmtk orthanc orthanc-dicomweb          # independent DICOM peers in tests and benchmarks
  openssh-server openssh-client rsync     # SFTP and rsync targets in tests
  docker.io debootstrap busybox-static    # processing modules and their offline test images
  docker-compose                          # checks infra/deploy/compose.yaml
  openssl
  chromium                                # browser tests of the web UI
)
missing=()
for package in "${packages[@]}"; do
  [[ $(dpkg-query -W -f='${Status}' "$package" 2>/dev/null) == "install ok installed" ]] ||
    missing+=("$package")
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-system: missing ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "install-system: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Modules run on the local Docker engine: start dockerd when its socket does not answer.
if [[ -z ${DOCKER_HOST:-} ]] && ! docker version >/dev/null 2>&1; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-system: the Docker engine does not answer; start dockerd as root" >&2
    exit 1
  fi
  echo "install-system: starting dockerd"
  setsid dockerd >>/var/log/talaria-dockerd.log 2>&1 </dev/null &
  for _ in $(seq 120); do
    docker version >/dev/null 2>&1 && break
    sleep 0.5
  done
fi
