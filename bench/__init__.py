"""Benchmarks; run them from the repository root: ``python -m bench`` (the whole suite) or one
of its parts, e.g. ``python -m bench.throughput``. See bench/README.md."""
