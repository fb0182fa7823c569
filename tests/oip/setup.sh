#!/usr/bin/env bash
# Create (or bring up to date) the Open Inference Protocol clients tests/oip/ runs against seqserve:
# .venv-oip at the repository root with the ecosystem's own client, tritonclient (its own venv:
# tritonclient needs protobuf<7, the main .venv pins protobuf 7), and grpc-js in tests/oip/js (an
# independent client in another language, from npm, versions locked by its package-lock.json).
# Idempotent and quick when everything is installed.
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
npm ci --prefix "$ROOT/tests/oip/js" --silent --no-audit --no-fund
echo "grpc-js ready: $(node -p "require('$ROOT/tests/oip/js/node_modules/@grpc/grpc-js/package.json').version")"
