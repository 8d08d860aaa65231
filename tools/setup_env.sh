#!/usr/bin/env bash
# Creates .venv/ at the repo root with torch, mmcv, mmengine, mmdet, pycocotools and
# this package (editable). Idempotent: a second run takes a second.
#
# MMCV_OPS picks mmcv's op kernels (default: keep what .venv/ has, else torchvision):
#   torchvision  mmcv 2.1.0 built without compiled ops (pure Python, seconds), installed
#                as mmcv 2.1.0+torchvision; its mmcv/_ext.py hands mmcv's op wrappers
#                torchvision's CPU and CUDA kernels (resnet_backbone/mmcv_ext.py).
#   compiled     mmcv 2.1.0 with its own compiled ops (C++20, about 10 min on 2 cores;
#                CUDA kernels too when nvcc is found). For ops the stand-in lacks.
# Wheels are cached in $RESNET_BACKBONE_CACHE/wheels (default ~/.cache/resnet_backbone).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY_BOOT="${PYTHON:-python3}"
CACHE="${RESNET_BACKBONE_CACHE:-$HOME/.cache/resnet_backbone}"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0
STAMP="$VENV/.resnet_backbone_env_ok"

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

MODE="${MMCV_OPS:-}"
if [ -z "$MODE" ]; then
  MODE="$(cut -d/ -f3 "$STAMP" 2>/dev/null || true)"
  MODE="${MODE:-torchvision}"
fi
case "$MODE" in
  torchvision|compiled) ;;
  *) die "MMCV_OPS=$MODE: expected 'torchvision' (default, nothing to compile) or 'compiled'" ;;
esac

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$TORCH_VERSION/$MMCV_VERSION/$MODE" ] \
   && "$VENV/bin/python" -c "import resnet_backbone, mmcv.ops, mmdet" 2>/dev/null; then
  say "environment in .venv/ is ready (mmcv ops: $MODE)"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating .venv/ with $($PY_BOOT --version)"
  "$PY_BOOT" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)

say "installing torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION (about 1 min)"
"${PIP[@]}" wheel packaging "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
# Every later install is pinned to this torch so pip never resolves a newer one.
PIN="$VENV/torch-pin.txt"
printf 'torch==%s\ntorchvision==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" > "$PIN"
PIP+=(-c "$PIN")
say "installing mmengine"
"${PIP[@]}" 'mmengine==0.10.7' 'numpy>=2' opencv-python-headless

# mmcv's sdist, unpacked into $1. Its setup.py imports pkg_resources (setuptools<70).
mmcv_source() {
  "${PIP[@]}" 'setuptools<70' 2>/dev/null  # pip warns that torch wants a newer one
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --no-build-isolation \
    --no-binary :all: "mmcv==$MMCV_VERSION" -d "$1" \
    || die "could not download the mmcv $MMCV_VERSION sdist from PyPI"
  tar -xzf "$1/mmcv-$MMCV_VERSION.tar.gz" -C "$1"
}

# mmcv/_ext.py of the torchvision build: mmcv's ops import it where no compiled _ext exists.
ext_shim() {
  cat <<'EOF'
"""mmcv's ``_ext`` in mmcv 2.1.0+torchvision, built without compiled ops by resnet_backbone's
tools/setup_env.sh: mmcv's op wrappers get torchvision's CPU and CUDA kernels from
``resnet_backbone.mmcv_ext``. A compiled ``_ext`` extension beside this file wins over it."""
try:
    from resnet_backbone.mmcv_ext import *  # noqa: F401,F403
except ImportError as error:
    raise ImportError(
        'mmcv 2.1.0+torchvision takes its op kernels from resnet_backbone.mmcv_ext, which does '
        f'not import ({error}). Install resnet_backbone (pip install -e <its repo>) or an mmcv '
        'with compiled ops.') from error
EOF
}

build_mmcv_torchvision() {
  local out=$1 work src
  work="$(mktemp -d)"
  say "building mmcv $MMCV_VERSION without compiled ops (pure Python, seconds)"
  mmcv_source "$work"
  src="$work/mmcv-$MMCV_VERSION"
  # Distributed as 'mmcv' (mmdet and this package require it; without ops mmcv calls itself
  # mmcv-lite), versioned 2.1.0+torchvision so it is never taken for the compiled build.
  sed -i "s/name='mmcv' if os.getenv('MMCV_WITH_OPS', '1') == '1' else 'mmcv-lite'/name='mmcv'/" \
    "$src/setup.py"
  sed -i "s/version=get_version(),/version=get_version() + '+torchvision',/" "$src/setup.py"
  grep -q "name='mmcv'," "$src/setup.py" && grep -q "'+torchvision'" "$src/setup.py" \
    || die "could not rename mmcv's distribution in its setup.py"
  ext_shim > "$src/mmcv/_ext.py"
  ( cd "$src" && MMCV_WITH_OPS=0 "$PY" -m pip wheel --quiet --disable-pip-version-check \
      --no-build-isolation --no-deps . -w "$out" ) || die "building the mmcv wheel failed"
  rm -rf "$work"
}

build_mmcv_compiled() {
  local out=$1 cuda=$2 work src log total
  work="$(mktemp -d)"
  mmcv_source "$work"
  src="$work/mmcv-$MMCV_VERSION"
  "${PIP[@]}" ninja
  say "building mmcv $MMCV_VERSION with compiled ops (CUDA: $cuda); about 10 minutes on 2 cores"
  # torch 2.14 headers need C++20; mmcv 2.1.0 asks for C++17.
  sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
  grep -q -- '-std=c++20' "$src/setup.py" || die "could not switch mmcv's setup.py to C++20"
  total=$(find "$src/mmcv/ops/csrc/pytorch" -name '*.cpp' -not -path '*/mlu/*' \
          -not -path '*/mps/*' -not -path '*/npu/*' -not -path '*/musa/*' | wc -l)
  log="$work/build.log"
  say "compiling about $total sources (log: $log)"
  ( cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA="$cuda" MAX_JOBS="$(nproc)" \
      "$PY" -m pip wheel --no-build-isolation --no-deps -v . -w "$out" ) 2>&1 \
    | tee "$log" | { n=0; while IFS= read -r line; do
        case "$line" in
          *"] c++ "*|*"] g++ "*|*"] nvcc "*|*"Building CXX"*|*" -c "*".c"[pu]*)
            n=$((n + 1)); f="${line##*/mmcv/ops/csrc/}"; f="${f%% *}"
            printf '[setup] mmcv build [%d/~%d] %s\n' "$n" "$total" "$f";;
        esac
      done; }
  [ "${PIPESTATUS[0]}" -eq 0 ] || die "mmcv build failed; see $log"
}

if [ "$MODE" = torchvision ]; then
  # the cache key follows the shim's text, so a changed shim builds a new wheel
  KEY="torchvision-$(ext_shim | sha256sum | cut -c1-12)"
else
  CUDA=0
  if command -v nvcc >/dev/null 2>&1 || [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
    CUDA=1
  fi
  KEY="compiled-cuda$CUDA"
fi
WHEELS="$CACHE/wheels/$KEY"
mkdir -p "$WHEELS"
WHEEL="$(ls "$WHEELS"/mmcv-"$MMCV_VERSION"*.whl 2>/dev/null | head -n1 || true)"
if [ -z "$WHEEL" ]; then
  if [ "$MODE" = torchvision ]; then build_mmcv_torchvision "$WHEELS"
  else build_mmcv_compiled "$WHEELS" "$CUDA"; fi
  WHEEL="$(ls "$WHEELS"/mmcv-"$MMCV_VERSION"*.whl 2>/dev/null | head -n1 || true)"
  [ -n "$WHEEL" ] || die "the mmcv build produced no wheel in $WHEELS"
else
  say "using cached mmcv wheel $WHEEL"
fi
"${PIP[@]}" "$WHEEL"
echo "$WHEEL" > "$VENV/mmcv-wheel"  # tools/gpu_check.sh --prepare carries it
# torch itself asks for a recent setuptools (torch.utils.cpp_extension).
"${PIP[@]}" 'setuptools>=77'

say "installing mmdet 3.3.0, pycocotools, timm, test tools and resnet_backbone (editable)"
"${PIP[@]}" 'mmdet==3.3.0' 'pycocotools>=2.0,<2.1' timm safetensors matplotlib pytest
"${PIP[@]}" --no-build-isolation -e "$ROOT"

if ! "$PY" -c "from mmcv.ops import RoIAlign, nms, ModulatedDeformConv2d" 2>"$VENV/mmcv_ops_error.txt"; then
  cat "$VENV/mmcv_ops_error.txt" >&2
  rm -f "$WHEEL"
  die "mmcv.ops does not import with the mmcv wheel just installed ($MODE ops). The cached wheel
was removed; run 'make setup' again to rebuild it. See README.md, Set-up."
fi
echo "$TORCH_VERSION/$MMCV_VERSION/$MODE" > "$STAMP"
say "environment ready: $("$PY" -c 'from resnet_backbone.mmcv_ext import mmcv_ops_summary; print(mmcv_ops_summary())')"
