#!/usr/bin/env bash
# Creates .venv/ at the repo root with torch, mmcv (compiled ops), mmengine,
# mmdet, pycocotools and this package (editable). Idempotent: a second run on
# the same machine reuses the cached mmcv wheel and takes seconds.
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

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$TORCH_VERSION/$MMCV_VERSION" ] \
   && "$VENV/bin/python" -c "import resnet_backbone, mmcv.ops, mmdet" 2>/dev/null; then
  say "environment in .venv/ is ready"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating .venv/ with $($PY_BOOT --version)"
  "$PY_BOOT" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)

say "installing build tools"
"${PIP[@]}" wheel ninja packaging
say "installing torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION (about 1 min)"
"${PIP[@]}" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
# Every later install is pinned to this torch so pip never resolves a newer one.
PIN="$VENV/torch-pin.txt"
printf 'torch==%s\ntorchvision==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" > "$PIN"
PIP+=(-c "$PIN")
say "installing mmengine"
"${PIP[@]}" 'mmengine==0.10.7' 'numpy>=2' opencv-python-headless

build_mmcv() {
  local work src log total
  work="$(mktemp -d)"
  # mmcv 2.1.0's setup.py imports pkg_resources, gone from setuptools>=70.
  "${PIP[@]}" 'setuptools<70' 2>/dev/null
  say "mmcv $MMCV_VERSION has no wheel for torch $TORCH_VERSION: building it from source with compiled ops."
  say "This takes about 10 minutes on 2 cores and happens once per machine (wheel cached in $CACHE/wheels)."
  "$PY" -m pip download --quiet --no-deps --no-build-isolation --no-binary :all: "mmcv==$MMCV_VERSION" -d "$work" \
    || die "could not download the mmcv $MMCV_VERSION sdist from PyPI"
  tar -xzf "$work/mmcv-$MMCV_VERSION.tar.gz" -C "$work"
  src="$work/mmcv-$MMCV_VERSION"
  # torch 2.14 headers need C++20; mmcv 2.1.0 asks for C++17.
  sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
  grep -q -- '-std=c++20' "$src/setup.py" || die "could not switch mmcv's setup.py to C++20"
  total=$(find "$src/mmcv/ops/csrc/pytorch" -name '*.cpp' -not -path '*/cuda/*' -not -path '*/mlu/*' \
          -not -path '*/mps/*' -not -path '*/npu/*' -not -path '*/musa/*' | wc -l)
  log="$work/build.log"
  say "compiling about $total C++ sources (log: $log)"
  ( cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="$(nproc)" \
      "$PY" -m pip wheel --no-build-isolation --no-deps -v . -w "$CACHE/wheels" ) 2>&1 \
    | tee "$log" | { n=0; while IFS= read -r line; do
        case "$line" in
          *"] c++ "*|*"] g++ "*|*"Building CXX"*|*" -c "*".cpp"*)
            n=$((n + 1)); f="${line##*/mmcv/ops/csrc/}"; f="${f%% *}"
            printf '[setup] mmcv build [%d/~%d] %s\n' "$n" "$total" "$f";;
        esac
      done; }
  [ "${PIPESTATUS[0]}" -eq 0 ] || die "mmcv build failed; see $log"
}

mkdir -p "$CACHE/wheels"
WHEEL="$(ls "$CACHE"/wheels/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
if [ -z "$WHEEL" ]; then
  build_mmcv
  WHEEL="$(ls "$CACHE"/wheels/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
  [ -n "$WHEEL" ] || die "the mmcv build produced no wheel in $CACHE/wheels"
else
  say "using cached mmcv wheel $WHEEL"
fi
"${PIP[@]}" "$WHEEL"
# torch itself asks for a recent setuptools (torch.utils.cpp_extension).
"${PIP[@]}" 'setuptools>=77'

say "installing mmdet 3.3.0, pycocotools, timm, test tools and resnet_backbone (editable)"
"${PIP[@]}" 'mmdet==3.3.0' 'pycocotools>=2.0,<2.1' timm safetensors matplotlib pytest
"${PIP[@]}" --no-build-isolation -e "$ROOT"

if ! "$PY" -c "from mmcv.ops import RoIAlign, nms, ModulatedDeformConv2d" 2>"$VENV/mmcv_ops_error.txt"; then
  cat "$VENV/mmcv_ops_error.txt" >&2
  rm -f "$CACHE"/wheels/mmcv-"$MMCV_VERSION"-*.whl
  die "mmcv.ops does not import: its compiled ops are missing or broken. The cached wheel was removed;
run 'make setup' again to rebuild it (needs gcc/g++ and about 10 minutes). See README.md, Set-up."
fi
echo "$TORCH_VERSION/$MMCV_VERSION" > "$STAMP"
say "environment ready: $("$PY" -c 'import torch, mmcv, mmdet; print(f"torch {torch.__version__}, mmcv {mmcv.__version__}, mmdet {mmdet.__version__}")')"
