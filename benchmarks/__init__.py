"""Speed and memory benchmarks: ``python -m benchmarks NAME``; results go in ``benchmarks/RESULTS.md``."""
