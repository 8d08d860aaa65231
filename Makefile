# Two commands do everything (each sets up .venv/ first, idempotently):
#   make demo   train + evaluate Mask R-CNN on the bundled synthetic demo data
#   make test   run the test suite
# mmcv's op kernels: torchvision's (default, nothing to compile), or mmcv's own compiled
# ops with `make setup MMCV_OPS=compiled` (later make calls keep what .venv/ has).
PY := .venv/bin/python
MMCV_OPS ?=

.PHONY: setup demo test benchmark clean-env

setup:
	MMCV_OPS=$(MMCV_OPS) bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest -q tests

benchmark: setup
	$(PY) tools/benchmark.py --detector --dtypes fp32 --only '*/eager/*,eval/*/nchw/compiled/*' --out docs/benchmarks.json --markdown docs/benchmarks.md
	$(PY) tools/benchmark.py --modes detector --dtypes fp32 --detector-size 320x320 --detector-repeats 9 --title 'CPU: Mask R-CNN on small images (2x3x320x320)' --out docs/benchmarks_detector_320.json --markdown docs/benchmarks.md --markdown-section cpu-detector-320

clean-env:
	rm -rf .venv
