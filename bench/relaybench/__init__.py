"""Benchmark suite internals: subjects (relays under test), the traffic generator and the statistics.

It lives outside ``src/`` because it is a tool that *measures* natrelay against other relays; nothing in
the product imports it, and it must keep working when the product is half-built (missing subjects are
skipped with a note instead of failing the run).
"""
