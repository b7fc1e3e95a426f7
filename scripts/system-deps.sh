#!/usr/bin/env bash
# Install the Debian packages the tests and benchmarks drive twistkv with:
# redis-tools (redis-cli, redis-benchmark), redis-server (the benchmark's
# reference), chromium and chromium-driver (the dashboard's browser test). Idempotent; needs root (CI and the dev machines run as root).
set -euo pipefail
need=()
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# The dashboard's browser test drives Debian's headless Chromium through chromedriver.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: need ${need[*]} (apt-get as root); tests that use them will be skipped" >&2
  exit 0
fi
echo "system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts redis-server as a service on install; our benchmark starts its own.
(command -v service >/dev/null && service redis-server stop >/dev/null 2>&1) || true
