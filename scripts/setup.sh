#!/usr/bin/env bash
# Set up imgnet in ./.venv (or $VENV): torch for this machine, the package, then pillow-simd last.
#   bash scripts/setup.sh            # the toolkit
#   bash scripts/setup.sh test       # plus the test tools
# TORCH_SPEC overrides the torch requirement, e.g. TORCH_SPEC="torch==2.5.1".
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
extra=${1:-}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
pip() { "$py" -m pip --disable-pip-version-check -q "$@"; }

if ! "$py" -c "import torch" 2>/dev/null; then
    if [ -n "${TORCH_SPEC:-}" ]; then
        pip install "$TORCH_SPEC"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        pip install torch                      # a CUDA build
    else
        pip install "torch==2.13.0" 2>/dev/null || pip install torch
    fi
fi
if [ "$extra" = test ]; then pip install -e ".[test]"; else pip install -e .; fi
# Pillow and pillow-simd both install as PIL; matplotlib pulls Pillow in, so pillow-simd goes last.
pip install --force-reinstall --no-deps pillow-simd
"$py" -c "from imagenet_prep.resize import pillow_flavour; f = pillow_flavour(); print('PIL in use:', f); assert f == 'pillow-simd', f"
echo "imgnet is set up in $venv"
