#!/usr/bin/env bash
# Screenshot a run's HTML report with headless Chromium (Debian package `chromium`).
#
#   scripts/screenshot_report.sh RUN [OUT.png] [HEIGHT]
#
# Builds RUN/report.html with `capro report RUN` when it is missing, then writes a 1280-px wide
# screenshot (default RUN/report.png, 2400 px tall). Chromium runs offline, in a throw-away profile.
# Not part of the test suite: CI does not need Chromium.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 RUN [OUT.png] [HEIGHT]" >&2
  exit 2
fi
run=$(realpath "$1")
out=$(realpath -m "${2:-$run/report.png}")
height=${3:-2400}
here=$(cd "$(dirname "$0")/.." && pwd)
capro=${CAPRO:-$here/.venv/bin/capro}
[[ -x $capro ]] || capro=capro

browser=$(command -v chromium || command -v chromium-browser || true)
if [[ -z $browser ]]; then
  echo "$0: chromium not found; install it with: apt-get update && apt-get install -y chromium" >&2
  exit 1
fi
if [[ ! -f $run/report.html ]]; then
  "$capro" report "$run"
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --screenshot="$out" --window-size=1280,"$height" \
  "file://$run/report.html" >/dev/null 2>&1
[[ -s $out ]] || { echo "$0: chromium wrote no screenshot to $out" >&2; exit 1; }
echo "screenshot: $out"
