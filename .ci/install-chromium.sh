#!/usr/bin/env bash
# Headless Chromium for tests/test_report.py (opens results/report.html, checks the DOM, screenshots it).
# Debian's package; idempotent and quiet. Run as root (CI is), e.g. from .ci/run before pytest:
#   bash .ci/install-chromium.sh
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium >/dev/null
echo "chromium installed: $(chromium --version 2>/dev/null | head -n1)"
