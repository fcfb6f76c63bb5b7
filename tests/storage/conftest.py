from __future__ import annotations

import pytest
from semel.storage import disk_executor


@pytest.fixture(autouse=True)
def _disk_jobs_end_with_their_test():
    """A test's roll and retention jobs (semel.storage.disk_executor) finish inside the test,
    so none of them runs, or is counted, in the next one."""
    yield
    assert disk_executor.shared().wait_idle(timeout_s=30), "disk jobs still running 30 s after the test"
