#!/usr/bin/env bash
# Create (or bring up to date) .venv-oip at the repository root: the ecosystem's own Open Inference
# Protocol client, tritonclient, for tests/oip/. Its own venv because tritonclient needs protobuf<7
# (and numpy<2 wheels of its time) while the main .venv pins protobuf 7. Idempotent and quick when
# the pins are already installed.
#
#   bash tests/oip/setup.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.venv-oip"
PYTHON="${PYTHON:-$(command -v python3)}"
PACKAGES=(
    "tritonclient[grpc]==2.73.0"
    "protobuf==6.33.6"
    "numpy==1.26.4"
)
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --disable-pip-version-check -q "${PACKAGES[@]}"
"$VENV/bin/python" -c "import tritonclient.grpc, google.protobuf; print('tritonclient ready, protobuf', google.protobuf.__version__)"
