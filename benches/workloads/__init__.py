"""Benchmark workloads. Each module runs one family in a fresh process and prints JSON."""
