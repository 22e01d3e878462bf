"""The research harness: the paper's evaluations and SRBench-style comparisons (see README.md)."""
