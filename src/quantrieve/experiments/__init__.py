"""Experiments on the standard protocols: protocol data, the benchmark grid and the demo."""
