#!/usr/bin/env bash
# Runs a command in a private network namespace that has only loopback, when this user can
# make one (root). Test peers such as DCMTK's storescp and Orthanc listen on every interface
# and cannot be told otherwise; inside the namespace every interface is loopback.
set -euo pipefail
if [[ $(id -u) -eq 0 ]] && unshare --net true 2>/dev/null; then
  exec unshare --net bash -c 'ip link set lo up && exec "$@"' isolated "$@"
fi
echo "isolated: cannot make a private network namespace (needs root); running as is" >&2
exec "$@"
