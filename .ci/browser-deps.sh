#!/usr/bin/env bash
# Debian packages the l4opt browser tests need: the system Chromium (driven by Playwright's
# Python package through executable_path; nothing downloads a browser) and fonts to render
# text. Run it (bash .ci/browser-deps.sh) before the tests; it does nothing when Chromium is
# already there.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    echo "browser-deps: $(chromium --version 2>/dev/null | head -n1)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core fonts-liberation >/dev/null
echo "browser-deps: $(chromium --version 2>/dev/null | head -n1)"
