"""Benchmarks for interventions: hook overhead against raw torch hooks and the peers, and the
activation store. Run ``python -m benchmarks.run``; see benchmarks/README.md."""
