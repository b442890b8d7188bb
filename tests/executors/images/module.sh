#!/bin/sh
# A mercure-style module on busybox: what it does is chosen by its environment (BEHAVIOUR).
set -u
in="$MERCURE_IN_DIR"
out="$MERCURE_OUT_DIR"
case "${BEHAVIOUR:-copy}" in
noop) ;;
copy)
  cp "$in"/*.dcm "$out"/
  echo "copied $(ls "$in"/*.dcm | wc -l) files"
  ;;
fail)
  echo "failing on purpose" >&2
  exit 3
  ;;
sleep)
  echo "sleeping"
  sleep "${SLEEP_S:-60}"
  cp "$in"/*.dcm "$out"/
  ;;
network)
  # The network interfaces the module sees: only "lo" when it has no network. Listing them
  # proves the isolation without sending traffic anywhere.
  printf '{"interfaces": "%s"}' "$(ls /sys/class/net | tr '\n' ' ')" >"$out/result.json"
  ;;
identity)
  if touch /written-by-module 2>/dev/null; then root_write=true; else root_write=false; fi
  caps=$(grep CapEff /proc/self/status | cut -f2)
  printf '{"uid": %s, "root_write": %s, "caps": "%s", "monai_in": "%s", "holoscan_out": "%s", "greeting": "%s", "task": %s}' \
    "$(id -u)" "$root_write" "$caps" "$MONAI_INPUTPATH" "$HOLOSCAN_OUTPUT_PATH" "${GREETING:-}" \
    "$(cat "$in/task.json")" >"$out/result.json"
  ;;
*)
  echo "unknown behaviour ${BEHAVIOUR}" >&2
  exit 2
  ;;
esac
