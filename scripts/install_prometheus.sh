#!/usr/bin/env bash
# Install the binaries the deployment tests run: promtool + prometheus (Debian package
# "prometheus", 2.42 on bookworm) and docker-compose (config validation only; no Docker daemon
# is needed). Idempotent: does nothing when the binaries are already on PATH. Needs root (CI is).
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if [ ${#missing[@]} -eq 0 ]; then
  echo "prometheus, promtool and docker-compose already installed"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "apt-get not available: install ${missing[*]} yourself; the tests that need them will skip" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# The package's postinst tries to start a system service; in containers that is refused, which is
# fine: the tests start their own prometheus on 127.0.0.1.
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || {
  command -v promtool >/dev/null 2>&1 || { echo "installing ${missing[*]} failed" >&2; exit 1; }
}
promtool --version | head -1
docker-compose version --short 2>/dev/null || true
