from __future__ import annotations

import pytest
from semel.storage import background_sync, disk_executor


@pytest.fixture(autouse=True)
def _disk_jobs_end_with_their_test():
    """A test's roll, retention and background-sync jobs finish inside the test, so none of
    them runs, or is counted, in the next one."""
    yield
    assert disk_executor.shared().wait_idle(timeout_s=30), "disk jobs still running 30 s after the test"
    assert background_sync.shared().wait_idle(timeout_s=30), "background syncs still running 30 s after the test"
