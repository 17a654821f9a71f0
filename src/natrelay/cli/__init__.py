"""Entry points only: they parse arguments and call into the packages.

Before any entry point imports the rest of natrelay, descriptors 0, 1 and 2 are reserved: a
program started with one of them closed would otherwise hand that number to whatever opens a
file first (pycapnp's schema loader keeps a directory open for the life of the process), and a
socket or directory would then play stdin or stdout.
"""

from natrelay.engine.stdio import reserve_standard_fds

reserve_standard_fds()
