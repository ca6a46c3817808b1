"""Benchmarks of qrun against native execution and its peers (`python -m bench.run`)."""
