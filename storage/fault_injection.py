"""A test-only I/O fault seam: segment writes fail with EIO while a trigger file exists.

Why a seam and not a device: the dev and CI machines run kernels without device-mapper (no
`dm-error`, no `dm-flakey`: `dmsetup targets` cannot reach the driver), so a real EIO cannot be
made there. The seam sits in `LogSegment.append`, just before the one `write()` of an append,
so everything above it (the log, the broker, the controller) runs exactly as on a real EIO.

Off unless the broker's environment sets `SEMEL_TEST_EIO_TRIGGER` to a file name; then a write
to a segment fails while a file of that name exists in the segment's log directory (the parent
of its partition directory), which lets a test fail one broker of several sharing one
environment. Costs one `stat` per append only when the variable is set.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

ENV = "SEMEL_TEST_EIO_TRIGGER"
_TRIGGER_NAME = os.environ.get(ENV) or None


def check_segment_write(partition_dir: Path, fd: int, data: bytes | memoryview) -> None:
    """If the trigger file exists in this partition's log directory: write the first half of
    `data` (a torn write, as a failing disk may leave) and raise EIO."""
    if _TRIGGER_NAME is not None and (partition_dir.parent / _TRIGGER_NAME).exists():
        os.write(fd, memoryview(data)[: len(data) // 2])
        raise OSError(errno.EIO, f"{os.strerror(errno.EIO)} (injected by {ENV})")
