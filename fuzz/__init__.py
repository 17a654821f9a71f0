"""Coverage-guided fuzz targets for every parser and protocol state machine (run with ``fuzz/run.py``)."""
