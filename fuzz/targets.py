"""Every fuzz target by name (imported inside atheris's instrumentation by ``fuzz/run.py``)."""

from __future__ import annotations

from fuzz.aspia_service_targets import TARGETS as ASPIA_SERVICES
from fuzz.aspia_targets import TARGETS as ASPIA
from fuzz.harness import Target
from fuzz.offset_targets import TARGETS as OFFSET

TARGETS: dict[str, Target] = {t.name: t for t in (*OFFSET, *ASPIA, *ASPIA_SERVICES)}
