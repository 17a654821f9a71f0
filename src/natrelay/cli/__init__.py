"""Entry points only: they parse arguments and call into the packages."""
