"""Benchmarks: latency measured side by side in one run (machines are noisy)."""
