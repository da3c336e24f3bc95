#!/usr/bin/env bash
# Run a command inside deepcomp's virtual environment, creating it first if needed.
#
#   bash tools/run.sh deepcomp demo          # the main job
#   bash tools/run.sh python -m pytest -q    # the tests
#
# The environment is cached outside the checkout, keyed by a hash of
# pyproject.toml (DEEPCOMP_VENV_CACHE, default ~/.cache/deepcomp-venv), so CI
# runs and fresh clones reuse it; a fresh machine builds it (~3 min, ~6 GB:
# pip resolves CUDA builds of torch/torchvision through compressai; they run
# on the CPU).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${DEEPCOMP_VENV_CACHE:-$HOME/.cache/deepcomp-venv}"
key="$(sha256sum "$root/pyproject.toml" | cut -c1-16)"
venv="$cache/$key"
mkdir -p "$cache"
# one build at a time: a second run.sh started meanwhile waits for the first build instead of wiping it
exec 9>"$venv.lock"
flock 9
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
    echo "tools/run.sh: building the environment in $venv (first run only)" >&2
    rm -rf "$venv"
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip >&2 2>/dev/null || true
    (cd "$root" && "$venv/bin/pip" install -q ".[test]") 2>&1 | grep -v "^WARNING: Location" >&2 || true
    "$venv/bin/python" -c "import compressai, torch, sklearn, bitarray, dahuffman, pytorch_msssim" \
        || { echo "tools/run.sh: environment build failed" >&2; exit 1; }
    touch "$venv/.complete"
fi
flock -u 9
exec 9>&-
# the checkout itself, not an installed copy
"$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$root" >/dev/null 2>&1 \
    || "$venv/bin/pip" install -q --no-deps -e "$root" 2>&1 | grep -v "^WARNING: Location" >&2
export PATH="$venv/bin:$PATH"
cd "$root"
exec "$@"
