# Two commands do everything (each sets up .venv/ first, idempotently):
#   make demo   train + evaluate Mask R-CNN on the bundled synthetic demo data (CPU)
#   make test   run the test suite
PY := .venv/bin/python

.PHONY: setup demo test benchmark clean-env

setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest -q tests

benchmark: setup
	$(PY) tools/benchmark.py --detector --only '*/eager/*,eval/*/nchw/compiled/*' --out docs/benchmarks.json --markdown docs/benchmarks.md

clean-env:
	rm -rf .venv
