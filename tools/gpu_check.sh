#!/usr/bin/env bash
# The GPU check: ONE command for the borrowed GPU machine (one H100, 16 cores, Python 3.12
# with torch 2.11 and torchvision 0.26 preinstalled, NO mmcv / mmengine / mmdet and no
# network there; the repo's working tree is copied, .venv/ is not).
#
#   here, once:   bash tools/gpu_check.sh --prepare     # fills .whl/ (about 10 MiB)
#   there:        bash tools/gpu_check.sh               # device tool: carry [".whl"], timeout_s 560
#
# What travels in .whl/: the set-up's own mmcv 2.1.0+torchvision wheel (pure Python; its
# mmcv/_ext.py takes the op kernels from resnet_backbone.mmcv_ext, i.e. torchvision's CUDA
# kernels), mmengine 0.10.7, mmdet 3.3.0 and the packages of theirs the image lacks
# (pycocotools and shapely as cp312 manylinux wheels). So everything runs there: mmcv.ops,
# MMDetection's ResNet with DCN, Mask R-CNN, the demo.
#
# Steps, inside a budget of GPU_CHECK_BUDGET_S seconds (default 500):
#   1. install the carried wheels into /tmp (pip --no-index --target), record the environment;
#   2. the CUDA tests: pytest -m cuda tests/ (the stand-in ops on CUDA against the CPU
#      references, DCN under autocast, ...);
#   3. tools/benchmark.py --device cuda: Mask R-CNN R-50-FPN training iterations, ours vs
#      MMDetection's ResNet, fp32 and bf16 AMP (the detector rows), and the backbone rows;
#   4. a short demo on CUDA (tools/demo.py --device cuda, 300 iterations): time and mAP.
# Results in $OUT (the device tool's; default work_dirs/gpu_check): gpu_check.log, env.txt,
# pytest_cuda.log, bench_cuda.json, bench_cuda.md, demo_summary.md. Render the JSON with
#   python tools/benchmark.py --from-json FILE --markdown docs/benchmarks.md --markdown-section cuda
#
# A CPU rehearsal of the same logic:
#   PYTHON=.venv/bin/python GPU_CHECK_DEVICE=cpu OUT=/tmp/gpu_check bash tools/gpu_check.sh
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WHL="${GPU_CHECK_WHEELS:-$ROOT/.whl}"
PY="${PYTHON:-python3}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
BUDGET="${GPU_CHECK_BUDGET_S:-500}"
PURE_WHEELS=(mmengine==0.10.7 mmdet==3.3.0 addict termcolor yapf platformdirs terminaltables)
BINARY_WHEELS=('pycocotools>=2.0,<2.1' 'shapely>=2')

prepare() {
  local wheel platforms=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64; do platforms+=(--platform "$p"); done
  mkdir -p "$WHL"
  rm -f "$WHL"/*.whl
  echo "[gpu_check] downloading wheels for Python 3.12 into $WHL"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp "${platforms[@]}" -d "$WHL" \
    "${PURE_WHEELS[@]}" "${BINARY_WHEELS[@]}" || return 1
  echo "[gpu_check] the set-up's mmcv 2.1.0+torchvision wheel (make setup builds it)"
  bash "$ROOT/tools/setup_env.sh" || return 1
  wheel="$(cat "$ROOT/.venv/mmcv-wheel" 2>/dev/null)"
  case "$wheel" in
    */mmcv-2.1.0+torchvision-*.whl) cp "$wheel" "$WHL"/ ;;
    *) echo "[gpu_check] ERROR: .venv/ has no mmcv 2.1.0+torchvision wheel ($wheel);" \
            "run 'make setup MMCV_OPS=torchvision'" >&2; return 1 ;;
  esac
  grep -qx '/.whl/' "$ROOT/.git/info/exclude" 2>/dev/null \
    || { [ -d "$ROOT/.git/info" ] && echo '/.whl/' >> "$ROOT/.git/info/exclude"; }
  ls -la "$WHL"
  du -sh "$WHL"
  echo "[gpu_check] ready: run 'bash tools/gpu_check.sh' on the device with carry [\".whl\"]"
}

if [ "${1:-}" = "--prepare" ]; then
  prepare || { echo "[gpu_check] ERROR: --prepare failed" >&2; exit 1; }
  exit 0
fi

OUT="${OUT:-$ROOT/work_dirs/gpu_check}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
START=$SECONDS
left() { echo $((BUDGET - (SECONDS - START))); }
log() { echo "[gpu_check +$((SECONDS - START))s] $*" | tee -a "$LOG"; }
# run SECONDS CMD...: at most SECONDS (and never past the budget), output into the log
run() {
  local limit=$1; shift
  local l; l=$(left)
  [ "$limit" -gt $((l - 5)) ] && limit=$((l - 5))
  if [ "$limit" -lt 20 ]; then log "SKIPPED (budget spent): $*"; return 124; fi
  log "running (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  log "exit $rc"
  return "$rc"
}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

# 1. environment
SITE="${GPU_CHECK_SITE:-/tmp/gpu_check_site}"
if ls "$WHL"/*.whl >/dev/null 2>&1; then
  rm -rf "$SITE"
  if "$PY" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile \
      --no-cache-dir --upgrade --target "$SITE" "$WHL"/*.whl 2>&1 | tee -a "$LOG"; then
    export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    log "installed $(ls "$WHL" | tr '\n' ' ')into $SITE"
  else
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    log "WARNING: installing the wheels failed: pure-torch rows only"
  fi
else
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  log "WARNING: no wheels in $WHL (run 'bash tools/gpu_check.sh --prepare' here and carry .whl):"
  log "         without mmcv/mmengine only the torchvision rows can run"
fi
{
  echo "== date: $(date -u)"; echo "== host: $(uname -a)"; echo "== nproc: $(nproc)"
  nvidia-smi 2>&1 || echo "(no nvidia-smi)"
  "$PY" - <<'EOF'
import importlib, sys
print('== python', sys.version.split()[0], sys.executable)
for name in ('torch', 'torchvision', 'numpy', 'mmengine', 'mmcv', 'mmdet', 'resnet_backbone'):
    try:
        m = importlib.import_module(name)
        print(f'== {name} {getattr(m, "__version__", "?")} ({m.__file__})')
    except Exception as e:
        print(f'== {name}: NOT importable: {type(e).__name__}: {e}')
import torch
print('== cuda available:', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')
for what, stmt in (('mmcv.ops', 'import mmcv.ops'),
                   ('mmdet.models', 'import mmdet.models'),
                   ('mmcv kernels', 'from resnet_backbone.mmcv_ext import mmcv_ops_summary; '
                    'print("==", mmcv_ops_summary())')):
    try:
        exec(stmt)
        print(f'== {what}: OK')
    except Exception as e:
        print(f'== {what}: FAILS: {type(e).__name__}: {str(e)[:200]}')
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >> "$LOG"
grep '^==' "$OUT/env.txt" | tail -n 12

# 2. CUDA tests
run 150 "$PY" -m pytest -q -m cuda -p no:cacheprovider \
  -W ignore::pytest.PytestUnknownMarkWarning tests > "$OUT/pytest_cuda.log" 2>&1
log "pytest -m cuda: $(grep -E '(passed|failed|skipped|error|deselected)' "$OUT/pytest_cuda.log" | tail -n 1)"

# 3. The benchmark on the device: the detector rows first (fp32 and bf16 AMP), then the
#    backbone rows; each writes its JSON when done.
if [ "$DEVICE" = cuda ]; then
  SIZES=(--repeats 20 --warmup 5 --cudnn-benchmark)
  DEMO_ITERS=300
else  # CPU rehearsal
  SIZES=(--tiny --threads 1)
  DEMO_ITERS=4
fi
run 180 "$PY" tools/benchmark.py --device "$DEVICE" "${SIZES[@]}" --modes detector \
  --dtypes fp32,bf16 --detector-repeats 10 --out "$OUT/bench_cuda_detector.json" \
  --markdown "$OUT/bench_cuda.md" --markdown-section "$DEVICE-detector"
run 150 "$PY" tools/benchmark.py --device "$DEVICE" "${SIZES[@]}" \
  --modes eval,train,train_cp,dcn --dtypes fp32,bf16 --channels-last off --compile off \
  --out "$OUT/bench_cuda.json" --markdown "$OUT/bench_cuda.md" --markdown-section "$DEVICE"

# 4. A short demo on the device: data, training, COCO evaluation, plots.
run 200 "$PY" tools/demo.py --device "$DEVICE" --iters "$DEMO_ITERS" \
  --val-interval "$DEMO_ITERS" --work-dir "$OUT/demo_work" --data-root /tmp/shapes \
  > "$OUT/demo.log" 2>&1
cp "$OUT/demo_work/summary.md" "$OUT/demo_summary.md" 2>/dev/null
log "demo: $(grep -E 'coco/(bbox|segm)_mAP >=|total' "$OUT/demo_summary.md" 2>/dev/null | tr '\n' ' ')"
rm -rf "$OUT/demo_work"
log "done in $((SECONDS - START))s; files in $OUT:"
ls -la "$OUT" | tee -a "$LOG"
exit 0
