#!/usr/bin/env bash
# Debian's Chromium for the report test (Playwright drives it; no browser is downloaded).
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi
chromium --version
