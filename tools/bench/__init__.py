"""The benchmark's measuring code; ``tools/benchmark.py`` is its command line."""
