"""Benchmarks (scripts that print numbers; never part of the test suite's pass/fail)."""
