#!/usr/bin/env bash
# The prepared GPU check (issue 13): end-to-end finetuning of cub100 (all 100 classes) with
# EfficientNet-Lite0 at 224 px in bf16 for cmbh, a2netpp, csq, dsh and thesis-sld at 32
# bits, GPU_CHECK_EPOCHS epochs each (default 5: a smoke benchmark, not the papers' 100).
# Prints training img/s and mAP per method, writes the records into $GPU_CHECK_OUT and the
# leaderboard into $GPU_CHECK_BOARD (its index states the epochs). Sized for under 8 minutes
# on one H200 with 16 cores. Finished runs are kept: run it again to resume or re-print.
# Then (issue 17) benchmarks/stage_map_speed.py on the same device: the frozen stage-map
# methods GPU_CHECK_SPEED_METHODS (default cmbh,thesis-ddl; "none" skips it) before and after
# the speed-ups, GPU_CHECK_SPEED_EPOCHS epochs each (default 3), old and new code on the same
# inputs, wall-time ratios (an estimated 2 more minutes: the frozen cache extracted on 16
# cores, 4 short runs; not measured yet). Without git history (a copied working tree) set
# GPU_CHECK_OLD_CODE to a folder made by `git archive 35fcf3a benchmark plugins | tar -x -C DIR`.
# Where the variable OUT names a folder (the device tool's folder of files sent back), the
# log goes there too (gpu_check.log), and the records and the leaderboard as gpu_check.tgz.
#
#   benchmarks/gpu_bundle.sh                     # here first: what the device machine lacks
#   benchmarks/gpu_check.sh                      # on the GPU machine, from the repository
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_DATASET=synthetic-fg GPU_CHECK_CLASSES=3 \
#   GPU_CHECK_EPOCHS=1 GPU_CHECK_SIZE=64 benchmarks/gpu_check.sh   # a tiny CPU try (the test)
#
# Every setting is an environment variable: GPU_CHECK_{DATASET,CLASSES,EPOCHS,SIZE,DEVICE,
# PRECISION,WORKERS,METHODS,BITS,OUT,BOARD,SPEED_METHODS,SPEED_EPOCHS,OLD_CODE}, PYTHON,
# BENCHMARK_DATA_ROOT. On the device machine, what benchmarks/gpu_bundle.sh put in .gpu/ is
# the default: the packages in .gpu/site (python3 when there is no .venv), the data in
# .gpu/data, the old code in .gpu/old.
set -euo pipefail
RETURN_DIR=${OUT:-}  # set by the device tool: what is written there comes back
if [ -n "$RETURN_DIR" ] && [ -d "$RETURN_DIR" ]; then
  exec > >(tee "$RETURN_DIR/gpu_check.log") 2>&1
fi
cd "$(dirname "$0")/.."

if [ -d .gpu/site ]; then
  export PYTHONPATH="$PWD/.gpu/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
DATASET=${GPU_CHECK_DATASET:-cub100}
CLASSES=${GPU_CHECK_CLASSES:-}           # empty: every class of the dataset
EPOCHS=${GPU_CHECK_EPOCHS:-5}
SIZE=${GPU_CHECK_SIZE:-224}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
PRECISION=${GPU_CHECK_PRECISION:-bf16}
CORES=$(nproc)
WORKERS=${GPU_CHECK_WORKERS:-$(( CORES > 4 ? CORES - 2 : 0 ))}
METHODS=${GPU_CHECK_METHODS:-cmbh,a2netpp,csq,dsh,thesis-sld}
BITS=${GPU_CHECK_BITS:-32}
RESULTS=${GPU_CHECK_OUT:-results/gpu_check}
BOARD=${GPU_CHECK_BOARD:-leaderboards/finetune}
SPEED_METHODS=${GPU_CHECK_SPEED_METHODS:-cmbh,thesis-ddl}
SPEED_EPOCHS=${GPU_CHECK_SPEED_EPOCHS:-3}
OLD_CODE=${GPU_CHECK_OLD_CODE:-}
[ -z "$OLD_CODE" ] && [ -d .gpu/old ] && OLD_CODE=.gpu/old
DATA_ROOT=../shared/datasets
[ -d .gpu/data ] && DATA_ROOT=.gpu/data
export BENCHMARK_DATA_ROOT=${BENCHMARK_DATA_ROOT:-$DATA_ROOT}

args=(--methods "$METHODS" --dataset "$DATASET" --regime finetune --backbone efficientnet_lite0
      --input-size "$SIZE" --bits "$BITS" --seeds 0 --epochs "$EPOCHS" --device "$DEVICE"
      --precision "$PRECISION" --workers "$WORKERS" --out "$RESULTS" --no-progress)
[ -n "$CLASSES" ] && args+=(--max-classes "$CLASSES")

"$PY" - <<'EOF'
import torch
print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
EOF
echo "gpu_check: $METHODS on $DATASET${CLASSES:+ (first $CLASSES classes)}, ${SIZE}px, $PRECISION," \
     "$EPOCHS epochs, $BITS bits, device $DEVICE, $WORKERS loader workers -> $RESULTS"
started=$SECONDS
status=0
"$PY" -m benchmark run "${args[@]}" || status=$?

"$PY" - "$RESULTS" <<'EOF'
import sys
from pathlib import Path
from benchmark.store.sqlite import ResultStore

with ResultStore(Path(sys.argv[1]) / "results.sqlite") as store:
    records = sorted(store.records(), key=lambda r: r["method"])
print(f"{'method':<12} {'status':<7} {'epochs':>6} {'device':<28} {'train img/s':>11} {'mAP':>7} {'wall s':>7}")
for r in records:
    p, m = r["provenance"], r["metrics"]
    speed = p.get("train_images_per_s")
    print(f"{r['method']:<12} {r['status']:<7} {p.get('epochs', '-')!s:>6} {p.get('device', '-'):<28} "
          f"{speed if speed is not None else '-'!s:>11} "
          f"{m['map'] if 'map' in m else float('nan'):>7.4f} {r.get('wall_time') or 0:>7.1f}")
    if r["status"] != "ok":
        print(f"  error: {r['error']}")
EOF
"$PY" -m benchmark leaderboard --results "$RESULTS" --out "$BOARD" > /dev/null
echo "gpu_check: leaderboard in $BOARD; $(( SECONDS - started )) s so far"

if [ "$SPEED_METHODS" != none ]; then
  speed=(--methods "$SPEED_METHODS" --epochs "$SPEED_EPOCHS" --bits "$BITS" --device "$DEVICE"
         --dataset "$DATASET" --input-size "$SIZE" --data-root "$BENCHMARK_DATA_ROOT")
  [ -n "$CLASSES" ] && speed+=(--max-classes "$CLASSES")
  [ -n "$OLD_CODE" ] && speed+=(--old-code "$OLD_CODE")
  echo "gpu_check: stage-map speed, $SPEED_METHODS, $SPEED_EPOCHS epochs, frozen, device $DEVICE"
  "$PY" benchmarks/stage_map_speed.py "${speed[@]}" || status=$?
fi
if [ -n "$RETURN_DIR" ] && [ -d "$RETURN_DIR" ]; then
  tar -czf "$RETURN_DIR/gpu_check.tgz" "$RESULTS" "$BOARD"
  echo "gpu_check: records and leaderboard packed into $RETURN_DIR/gpu_check.tgz"
fi
echo "gpu_check: $(( SECONDS - started )) s in all"
exit "$status"
