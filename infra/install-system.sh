#!/usr/bin/env bash
# Installs the Debian packages Talaria and its tests need, only those missing.
# Java + Maven run the local Kafka broker; DCMTK is the independent DICOM peer in tests.
set -euo pipefail

missing=()
need() { # need COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || missing+=("$2")
}
need java openjdk-17-jre-headless
need mvn maven
need storescu dcmtk

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
