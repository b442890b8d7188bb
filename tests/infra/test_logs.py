"""Every service's log lines are JSON objects that carry the ids the call site names."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
# Faust (the streams worker) replaces sys.stdout with a logger of its own while it runs.
PROGRAM = """
import structlog
from mode.utils.logging import redirect_stdouts
from infra.logs import configure_logging
configure_logging()
with redirect_stdouts():
    structlog.get_logger("executors.dispatch").info(
        "dispatched", job_id="j-1", study_uid="1.2", series_uids=["1.2.3"]
    )
    structlog.get_logger("x").debug("not at info level")
"""


def test_a_log_line_is_one_json_object_with_level_time_and_ids() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=ROOT, capture_output=True, text=True, check=True
    )
    (line,) = result.stdout.splitlines()
    entry = json.loads(line)
    assert entry["event"] == "dispatched"
    assert (entry["level"], entry["job_id"], entry["study_uid"]) == ("info", "j-1", "1.2")
    assert entry["series_uids"] == ["1.2.3"]
    assert entry["timestamp"].endswith("Z")
