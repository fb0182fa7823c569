#!/usr/bin/env bash
# Train, export and evaluate the bundled models, one command each (fixed seeds, 2-core CPU):
#   scripts/build_bundles.sh forecast-etth1 forecast-global generate-shakespeare translate-de-en translate-zh-en
# For each NAME: trains training/presets/NAME.yaml into runs/NAME (an interrupted run continues with
# `seqserve-train train TASK --preset NAME --out runs/NAME --resume`),
# exports runs/NAME/best.pt to models/NAME/VERSION, evaluates the bundle with onnxruntime on the test
# split (translation also with beam 4) and stores the figures in its manifest, then stores its weights
# as int8 if every figure holds within 1% (seqserve-train quantize). Needs the train extra and
# SEQSERVE_DATA_DIR. Environment: VERSION (default 1), THREADS (torch threads; default: the preset's
# train.num_threads, as the bundle was trained; onnxruntime threads for evaluation: THREADS or 2),
# MODELS (default models), INT8 (default 1; 0 keeps float32 weights).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${VERSION:-1}
THREADS=${THREADS:-}
EVAL_THREADS=${THREADS:-2}
MODELS=${MODELS:-models}
INT8=${INT8:-1}
[ $# -gt 0 ] || { sed -n '2,11p' "$0"; exit 2; }
for name in "$@"; do
  preset=training/presets/$name.yaml
  [ -f "$preset" ] || { echo "no preset $preset" >&2; exit 2; }
  task=$(python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['task'])" "$preset")
  threads=(); [ -n "$THREADS" ] && threads=(--set "train.num_threads=$THREADS")
  seqserve-train train "$task" --preset "$name" --out "runs/$name" "${threads[@]}"
  rm -rf "${MODELS:?}/$name/$VERSION"
  default=(); [ "$name" = forecast-global ] && default=(--default)  # the default forecaster (issue 17)
  seqserve-train export --checkpoint "runs/$name/best.pt" --models "$MODELS" --name "$name" --version "$VERSION" "${default[@]}"
  if [ "$name" = forecast-global ]; then  # trained on no one dataset: its held-out figures are the zero-shot benchmark's
    seqserve-train zero-shot --bundle "$MODELS/$name/$VERSION" --baselines "" --write-manifest --out "runs/$name/zeroshot"
    continue  # float32: quantize checks test-split figures, which a global model has none of
  fi
  seqserve-train evaluate --bundle "$MODELS/$name/$VERSION" --split test --threads "$EVAL_THREADS" --write-manifest
  if [ "$task" = translate ]; then
    seqserve-train evaluate --bundle "$MODELS/$name/$VERSION" --split test --threads "$EVAL_THREADS" --beam 4 --write-manifest
  fi
  if [ "$INT8" = 1 ]; then
    seqserve-train quantize --bundle "$MODELS/$name/$VERSION" --threads "$EVAL_THREADS" \
      || echo "$name: weights stay float32 (the figures above did not hold)" >&2
  fi
done
