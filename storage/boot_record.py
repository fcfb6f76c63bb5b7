"""Did this broker's machine restart since the broker last ran?

A broker that does not fsync every write (`fsync: false`, the default) acknowledges records
that are only in the OS page cache. A process crash keeps them (the kernel still has them); a
power loss or an OS crash drops them. So after a *machine* restart such a broker's logs may lack
a suffix that the cluster counted as replicated, and it must not be trusted as the one replica
that holds every acknowledged record: it registers with `lost_unsynced_writes`, and the
metadata quorum removes it from every ISR and ELR where another replica can stand in for it
(`semel.cluster.metadata.state`, KIP-966's unclean-shutdown rule, with a sharper test: Kafka
treats every unclean shutdown as a possible loss, a process crash included).

How: Linux gives every boot a random id (`/proc/sys/kernel/random/boot_id`). The broker keeps
the id it started under in `<data dir>/boot-id` (written atomically and fsynced at every
start); a different id at the next start means the machine restarted in between. Under the
test-only power-cut layer (`semel.storage.power_cut`), each simulated cut counts as a boot.
Where no boot id is available the answer is "maybe", which is the safe one.

The record also keeps the answer until the quorum has it: a start that finds a machine restart
leaves `loss_pending` set, and only `loss_reported()` (called once a registration carrying
`lost_unsynced_writes` committed) clears it. Without that, a process that died between its start
and its registration (the record already rewritten with the new boot id) came back claiming a
clean history, and was re-elected on its short log as the last ISR member (found by the
deterministic simulation, seed 509; docs/chaos.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from semel.storage import power_cut
from semel.storage.checkpoint import CorruptCheckpointError, read_json, write_json

log = logging.getLogger(__name__)

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
RECORD_NAME = "boot-id"


def current_boot_id(data_dir: str | Path) -> str:
    """This boot's id ("" when the OS does not say), plus the simulated power cuts under the
    test layer."""
    try:
        boot_id = BOOT_ID_PATH.read_text().strip()
    except OSError:
        boot_id = ""
    if boot_id and os.environ.get(power_cut.ENV) == "1":
        boot_id += f"+cut{power_cut.cuts_of(data_dir)}"
    return boot_id


def machine_restarted(data_dir: str | Path) -> bool:
    """True when the broker that last used `data_dir` ran under another boot (or it cannot
    tell), or when an earlier start found that and `loss_reported` was not called since; False
    for a fresh data dir or the same boot. Records this boot for the next start."""
    data_dir = Path(data_dir)
    path = data_dir / RECORD_NAME
    now = current_boot_id(data_dir)
    try:
        record = read_json(path)
    except CorruptCheckpointError as exc:
        log.warning("%s; counting this start as a machine restart", exc)
        record = {"boot_id": ""}
    fresh = record is None and not any(data_dir.glob("logs/*"))
    previous = record.get("boot_id", "") if isinstance(record, dict) else ""
    pending = isinstance(record, dict) and record.get("loss_pending") is True
    restarted = not fresh and (pending or not now or previous != now)
    write_json(path, {"boot_id": now, "loss_pending": restarted})
    return restarted


def loss_reported(data_dir: str | Path) -> None:
    """The metadata quorum committed a registration that said `lost_unsynced_writes` (or the
    broker syncs every write, so there is nothing to report): later starts in this boot are
    process restarts again."""
    path = Path(data_dir) / RECORD_NAME
    write_json(path, {"boot_id": current_boot_id(data_dir), "loss_pending": False})
