"""RLIMIT_NOFILE is raised to the hard limit and the outcome is logged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

resource = pytest.importorskip("resource")

SRC = str(Path(__file__).resolve().parents[3] / "src")

# Run in a child: lowering the soft limit in the test process could starve other tests.
CHILD = """
import json, logging, resource, sys
from natrelay.engine.resources import fd_budget, raise_nofile_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
records = []
class H(logging.Handler):
    def emit(self, r): records.append(r.getMessage())
log = logging.getLogger("t"); log.addHandler(H()); log.setLevel(logging.INFO)
first = raise_nofile_limit(log)
second = raise_nofile_limit(log)
print(json.dumps({"hard": hard, "first": first, "second": second, "budget": fd_budget(),
                  "now": resource.getrlimit(resource.RLIMIT_NOFILE)[0], "log": records}))
"""


def test_raises_soft_limit_to_hard_and_logs() -> None:
    env = dict(os.environ, PYTHONPATH=SRC)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                         timeout=30, check=True)
    r = json.loads(out.stdout)
    hard = r["hard"]
    expected = hard if hard != resource.RLIM_INFINITY else r["now"]
    assert r["first"] == [min(256, hard), expected]
    assert r["now"] == expected == r["budget"]
    assert r["second"] == [expected, expected]
    assert "raised soft limit from 256" in r["log"][0] or hard <= 256
    assert "already at the hard limit" in r["log"][1]
