#!/usr/bin/env bash
# The GPU check: ONE command for the borrowed GPU machine (one H100, 16 cores,
# torch 2.11 preinstalled, NO mmcv / mmengine / mmdet and no network there; the
# repo's working tree is copied, .venv/ is not).
#
#   here, once:   bash tools/gpu_check.sh --prepare     # fills .whl/ with pure-python wheels
#   there:        bash tools/gpu_check.sh               # device tool: carry [".whl"], timeout_s 540
#
# What can run there, and why:
#   * mmengine 0.10.7, mmdet 3.3.0, addict, termcolor, yapf, platformdirs and
#     terminaltables are pure-python wheels: carried in .whl/ (~4 MiB).
#   * mmcv 2.1.0 has no wheel for torch 2.11 / CUDA 13; its compiled ops take
#     far longer than 8 minutes to build. --prepare builds mmcv *without* ops
#     (pure python, "mmcv-lite"), which is all our backbone needs (mmcv.cnn).
#   * MMDetection's ResNet: `mmdet.models` imports every detector, hence
#     mmcv.ops, so it fails; tools/benchmark.py then imports mmdet's own
#     backbones/resnet.py on its own (see _load_mmdet_resnet_standalone), so the
#     backbone comparison against MMDetection still runs on CUDA.
#   * Not possible there: MMDetection with DCN and our dcn backend 'mmcv'
#     (mmcv.ops.DeformConv2d), and the Mask R-CNN comparison (RoIAlign and nms
#     are mmcv.ops). Those rows come out as 'unavailable: ...'; the DCN rows run
#     with our torchvision backend only.
#   * If the wheels are missing, only torchvision rows run (pure torch).
#
# Steps, inside a budget of GPU_CHECK_BUDGET_S seconds (default 460, < 8 min):
#   1. install the carried wheels into /tmp (pip --no-index --target), record the environment;
#   2. the CUDA tests: pytest -m cuda tests/;
#   3. tools/benchmark.py --device cuda, fp32 and bf16, eval / train / train_cp / DCN /
#      detector, channels_last off and on, torch.compile off;
#   4. with the time left: torch.compile on, eval, mmdet vs ours-infer, bf16 then fp32.
# Results in $OUT (the device tool's; default work_dirs/gpu_check): gpu_check.log,
# env.txt, pytest_cuda.log, bench_cuda.json, bench_cuda.md, bench_cuda_compile_fp32.json,
# bench_cuda_compile_bf16.json. Render any JSON with
#   python tools/benchmark.py --from-json FILE --markdown docs/benchmarks.md --markdown-section cuda
#
# A CPU rehearsal of the same logic (mmcv-lite shadows the full mmcv of .venv):
#   PYTHON=.venv/bin/python GPU_CHECK_DEVICE=cpu OUT=/tmp/gpu_check bash tools/gpu_check.sh
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WHL="${GPU_CHECK_WHEELS:-$ROOT/.whl}"
PY="${PYTHON:-python3}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
BUDGET="${GPU_CHECK_BUDGET_S:-460}"
MMCV_VERSION=2.1.0
PURE_WHEELS=(mmengine==0.10.7 mmdet==3.3.0 addict termcolor yapf platformdirs terminaltables)

prepare() {
  local tmp venv
  mkdir -p "$WHL"
  tmp="$(mktemp -d)"
  echo "[gpu_check] downloading pure-python wheels into $WHL"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux2014_x86_64 -d "$WHL" "${PURE_WHEELS[@]}" || return 1
  echo "[gpu_check] building mmcv $MMCV_VERSION without compiled ops (pure python, ~1 min)"
  venv="$tmp/venv"
  python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check \
    'setuptools<70' wheel || return 1   # mmcv's setup.py imports pkg_resources
  "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    --no-build-isolation "mmcv==$MMCV_VERSION" -d "$tmp" || return 1
  tar -xzf "$tmp/mmcv-$MMCV_VERSION.tar.gz" -C "$tmp"
  rm -f "$WHL"/mmcv_lite-*.whl
  (cd "$tmp/mmcv-$MMCV_VERSION" && MMCV_WITH_OPS=0 "$venv/bin/pip" wheel --quiet \
    --disable-pip-version-check --no-build-isolation --no-deps . -w "$WHL") || return 1
  rm -rf "$tmp"
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
                   ('mmdet ResNet (standalone)', 'import sys; sys.path.insert(0, "tools"); '
                    'import benchmark; print(benchmark.mmdet_resnet()[1])')):
    try:
        exec(stmt)
        print(f'== {what}: OK')
    except Exception as e:
        print(f'== {what}: FAILS: {type(e).__name__}: {str(e)[:200]}')
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >> "$LOG"
grep '^==' "$OUT/env.txt" | tail -n 12

# 2. CUDA tests (in the CPU rehearsal this only shows which test modules import without mmcv.ops)
run 150 "$PY" -m pytest -q -m cuda -p no:cacheprovider --continue-on-collection-errors \
  -W ignore::pytest.PytestUnknownMarkWarning tests > "$OUT/pytest_cuda.log" 2>&1
log "pytest -m cuda: $(grep -E '(passed|failed|skipped|error|deselected)' "$OUT/pytest_cuda.log" | tail -n 1)"

# 3. The benchmark on the device, no compile.
if [ "$DEVICE" = cuda ]; then
  SIZES=(--repeats 20 --warmup 5 --cudnn-benchmark)
else  # CPU rehearsal
  SIZES=(--tiny --threads 1)
fi
run 300 "$PY" tools/benchmark.py --device "$DEVICE" "${SIZES[@]}" --detector \
  --modes eval,train,train_cp,dcn --dtypes fp32,bf16 --channels-last off,on --compile off \
  --out "$OUT/bench_cuda.json" --markdown "$OUT/bench_cuda.md" --markdown-section "$DEVICE"

# 4. torch.compile, eval, the inference switches vs MMDetection, bf16 first (each run writes
#    its JSON when its setting is done; a run cut short by the budget leaves none).
for dt in bf16 fp32; do
  run 180 "$PY" tools/benchmark.py --device "$DEVICE" "${SIZES[@]}" --modes eval --dtypes "$dt" \
    --channels-last off --compile on --only '*/ours-infer' --out "$OUT/bench_cuda_compile_$dt.json"
done
log "done in $((SECONDS - START))s; files in $OUT:"
ls -la "$OUT" | tee -a "$LOG"
exit 0
