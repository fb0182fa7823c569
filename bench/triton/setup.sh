#!/usr/bin/env bash
# Create (or bring up to date) .venv-triton at the repository root: Triton Inference Server through
# nvidia-pytriton (the wheel bundles the tritonserver binary), onnxruntime for the model and
# tritonclient for the load generator.
#
# A separate venv because pytriton/tritonclient need numpy<2 and protobuf<7 while the main .venv has
# numpy 2 and protobuf 7. Idempotent: rerunning only installs what is missing or at another version.
#
#   bash bench/triton/setup.sh            # uses python3.11 (pytriton ships stubs for 3.8-3.12)
#   PYTHON=/path/to/python3.11 bash bench/triton/setup.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.venv-triton"

# Same interpreter as the main venv when there is one (its python minor decides which backend stub
# pytriton uses), else python3.11 / python3 from PATH.
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -f "$ROOT/.venv/pyvenv.cfg" ]]; then
        home="$(sed -n 's/^home *= *//p' "$ROOT/.venv/pyvenv.cfg")"
        for candidate in "$home/python3.11" "$home/python3"; do
            [[ -x "$candidate" ]] && PYTHON="$candidate" && break
        done
    fi
    PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
fi

# Exact versions this setup was tested with (2 CPU cores, Linux x86_64, CPython 3.11.7).
# onnxruntime: the main venv's version (1.32.0); its wheel also supports numpy 1.26.
PACKAGES=(
    "nvidia-pytriton==0.7.0"   # bundles tritonserver 2.51 + python backend stubs
    "numpy==1.26.4"            # pytriton 0.7.0 needs numpy<2
    "protobuf==6.33.6"         # pytriton / tritonclient need protobuf<7
    "onnxruntime==1.32.0"
    "tritonclient[grpc]==2.73.0"
)

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi

# Skip pip entirely when every pin is already satisfied (fast, no network).
if "$VENV/bin/python" - "${PACKAGES[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    name = name.split("[")[0]
    try:
        have = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if have != want:
        sys.exit(1)
EOF
then
    echo "$VENV is up to date"
else
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q "${PACKAGES[@]}"
fi

# Smoke check: imports, and where the bundled server binary is.
"$VENV/bin/python" - <<'EOF'
import pathlib, sysconfig
import numpy, onnxruntime, google.protobuf, tritonclient.grpc.aio  # noqa: F401
import pytriton
server = pathlib.Path(pytriton.__file__).parent / "tritonserver" / "bin" / "tritonserver"
print(f"numpy {numpy.__version__}, protobuf {google.protobuf.__version__}, onnxruntime {onnxruntime.__version__}")
print(f"tritonserver binary: {server} ({'present' if server.exists() else 'MISSING'})")
print(f"python LIBDIR (bench/triton/server.py puts it on LD_LIBRARY_PATH): {sysconfig.get_config_var('LIBDIR')}")
EOF
