#!/usr/bin/env bash
# The README's two set-up commands, on a fresh Debian machine, as root:
#   ./setup.sh demo   install everything, then run the main job
#   ./setup.sh test   install everything, then run lint, types and the tests
# Any other make target works too (bench, install, ...).
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v make >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends make
fi
exec make "${@:-demo}"
