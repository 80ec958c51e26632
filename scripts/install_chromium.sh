#!/usr/bin/env bash
# Make the console tests' browser available: Debian's `chromium` package at /usr/bin/chromium
# (Playwright drives it through executable_path; no browser is downloaded). Fonts come with
# the package's recommends. Idempotent: returns at once when chromium is already there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
echo "install_chromium: installing chromium from the distribution's packages" >&2
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
test -x /usr/bin/chromium
