"""pgsnap's benchmark harness (README.md, "Benchmark"): ``python -m bench --scale small``.

``bench.scenarios`` runs every figure on one generated dataset; ``bench.peer`` is the original
application's populate algorithm re-implemented in Python, the side-by-side baseline.
"""
