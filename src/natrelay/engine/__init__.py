"""Protocol-neutral relay machinery: timers, limits, counters, forwarding.

Nothing here imports a protocol family; the families import the engine.
"""
