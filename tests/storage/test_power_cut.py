"""The test-only power-cut layer (`semel.storage.power_cut`): its model of what a power cut
keeps, and the partition log under it (a real writer process, SIGKILL, restore, reopen).

Seeded: SEMEL_SEED=<n> replays the process test (the seed is printed)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from semel.storage import power_cut
from semel.storage.power_cut import DurableImage, restore

from tests.storage.test_log_crash import WRITER, verify


def _sync(image: DurableImage, path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
        image.on_sync(fd)
    finally:
        os.close(fd)


@pytest.fixture
def image(tmp_path: Path) -> DurableImage:
    data = tmp_path / "data"
    data.mkdir()
    (data / "boot").write_bytes(b"there at boot")
    (data / "broker.log").write_bytes(b"log")
    img = DurableImage(data, tmp_path / "image")
    img.boot()
    return img


def test_boot_state_is_durable_and_unsynced_changes_are_lost(image: DurableImage) -> None:
    data = image.data_dir
    with open(data / "boot", "ab") as f:
        f.write(b" and more")
    (data / "new").write_bytes(b"never synced")
    (data / "broker.log").write_bytes(b"log, longer")
    restore(data, image.image_dir, seed=1)
    assert sorted(p.name for p in data.iterdir()) == ["boot", "broker.log"]
    assert (data / "boot").read_bytes() == b"there at boot"
    assert (data / "broker.log").read_bytes() == b"log, longer"  # not the broker's data: kept


def test_a_file_needs_its_own_sync_and_its_directory_sync(image: DurableImage) -> None:
    data = image.data_dir
    (data / "a").write_bytes(b"synced before its name")
    _sync(image, data / "a")
    (data / "b").write_bytes(b"name synced, bytes not")
    (data / "c").write_bytes(b"both")
    _sync(image, data / "c")
    _sync(image, data)
    (data / "d").write_bytes(b"synced, its name not")
    _sync(image, data / "d")
    restore(data, image.image_dir, seed=1)
    assert {p.name: p.read_bytes() for p in data.iterdir() if p.name != "broker.log"} == {
        "boot": b"there at boot", "a": b"synced before its name", "b": b"", "c": b"both"}


def test_rename_is_durable_only_with_the_directory_sync(image: DurableImage) -> None:
    data = image.data_dir
    (data / "ck").write_bytes(b"old")
    _sync(image, data / "ck")
    _sync(image, data)
    (data / "ck.tmp").write_bytes(b"new")
    _sync(image, data / "ck.tmp")
    os.replace(data / "ck.tmp", data / "ck")
    restore(data, image.image_dir, seed=1)
    assert (data / "ck").read_bytes() == b"old"
    assert not (data / "ck.tmp").exists()


def test_appends_are_recorded_incrementally_and_truncation_is_seen(image: DurableImage) -> None:
    data = image.data_dir
    fd = os.open(data / "seg", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        _sync(image, data)
        for i in range(5):
            os.write(fd, bytes([65 + i]) * 5000)
            os.fsync(fd)
            image.on_sync(fd)
        os.ftruncate(fd, 7000)
        image.on_truncate(fd)
        os.write(fd, b"Z" * 100)
        os.fsync(fd)
        image.on_sync(fd)
        os.write(fd, b"lost")
    finally:
        os.close(fd)
    restore(data, image.image_dir, seed=1)
    assert (data / "seg").read_bytes() == b"A" * 5000 + b"B" * 2000 + b"Z" * 100


def test_torn_keeps_a_prefix_of_the_unsynced_tail(tmp_path: Path) -> None:
    kept = set()
    for seed in range(20):
        data, img_dir = tmp_path / f"d{seed}", tmp_path / f"i{seed}"
        data.mkdir()
        img = DurableImage(data, img_dir)
        img.boot()
        (data / "seg").write_bytes(b"synced")
        _sync(img, data / "seg")
        _sync(img, data)
        with open(data / "seg", "ab") as f:
            f.write(b"0123456789")
        restore(data, img_dir, seed=seed, torn=True)
        content = (data / "seg").read_bytes()
        assert (b"synced" + b"0123456789").startswith(content) and content.startswith(b"synced")
        kept.add(len(content))
    assert len(kept) > 3  # torn at different points


def test_rocksdb_wal_is_cut_and_the_rest_kept(image: DurableImage) -> None:
    data = image.data_dir
    (data / "kv").mkdir()
    (data / "kv" / "000001.sst").write_bytes(b"s" * 100)
    (data / "kv" / "000004.log").write_bytes(b"w" * 1000)
    stats = restore(data, image.image_dir, seed=3)
    assert (data / "kv" / "000001.sst").read_bytes() == b"s" * 100
    assert (data / "kv" / "000004.log").stat().st_size == 1000 - stats["wal_bytes_cut"]
    assert stats["wal_bytes_cut"] > 0


def test_image_on_another_filesystem_is_refused(tmp_path: Path) -> None:
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the test filesystem")
    with pytest.raises(RuntimeError, match="not on the filesystem"):
        DurableImage(tmp_path, Path("/dev/shm") / f"semel-image-{os.getpid()}").boot()


WRITER_UNDER_POWER_CUT = (
    "import os, sys\n"
    "from semel.storage import power_cut\n"
    "data = os.path.dirname(sys.argv[1])\n"
    "os.makedirs(data, exist_ok=True)\n"
    "power_cut.install(data, data + '.image')\n" + WRITER
)
ITERATIONS = 10


def _run_writer(directory: Path, policy: str, kill_after: int, acked_end: int) -> int:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", WRITER_UNDER_POWER_CUT, str(directory), policy],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        opened = proc.stdout.readline().split()
        assert opened and opened[0] == "open", proc.stderr.read()
        acks = 0
        while acks < kill_after:
            line = proc.stdout.readline()
            if line.startswith("truncating"):
                acked_end = min(acked_end, int(line.split()[1]))
                continue
            assert line.startswith("ack"), f"writer died: {proc.stderr.read()}"
            acked_end = int(line.split()[1])
            acks += 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return acked_end


@pytest.mark.slow
def test_power_cut_never_loses_an_append_synced_before_it_returned(tmp_path: Path) -> None:
    """Flush policy `always`: every returned append survives a power cut, torn tails included."""
    seed = int(os.environ.get("SEMEL_SEED", "20261207"))
    print(f"seed {seed}")
    rnd = random.Random(seed)
    directory = tmp_path / "data" / "p0"  # created by the first writer: its directory entry must last too
    acked_end = 0
    torn_files = 0
    for iteration in range(ITERATIONS):
        acked_end = _run_writer(directory, "always", rnd.randint(1, 120), acked_end)
        stats = restore(directory.parent, str(directory.parent) + ".image", seed=rnd.getrandbits(32), torn=True)
        torn_files += stats["torn_files"]
        start, end = verify(directory, "always", acked_end)
        print(f"iteration {iteration}: log [{start}, {end}), acked up to {acked_end}, restore {stats}")
    assert acked_end > 0
    assert torn_files > 0  # some cut really tore a tail


@pytest.mark.slow
def test_power_cut_loses_unsynced_appends(tmp_path: Path) -> None:
    """Flush policy `never`: the layer bites (a process kill alone would lose nothing)."""
    directory = tmp_path / "data" / "p0"
    acked_end = _run_writer(directory, "never", 100, 0)
    stats = restore(directory.parent, str(directory.parent) + ".image", seed=7)
    assert stats["lost_bytes"] > 0
    with pytest.raises(AssertionError, match="acknowledged appends up to"):
        verify(directory, "never", acked_end)
    assert power_cut.installed() is None  # nothing in this process was patched


def test_a_broker_killed_before_its_image_was_whole_keeps_its_data(tmp_path: Path) -> None:
    """The image is built under a temporary name: killed mid-boot, there is none, and the data
    dir (which nothing wrote since the layer was not on yet) stays as it is."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "seg").write_bytes(b"kept")
    (tmp_path / "data.durable.booting" / "dirs").mkdir(parents=True)  # a boot that was cut short
    stats = power_cut.cut(data, seed=1)
    assert stats["not_booted"] == 1
    assert (data / "seg").read_bytes() == b"kept"
    assert not (tmp_path / "data.durable.booting").exists()


TRUNCATOR = (
    "import os, sys\n"
    "from semel.storage import power_cut\n"
    "from semel.storage.batch import BatchHeader, encode_batch\n"
    "from semel.storage.log import LogConfig, PartitionLog\n"
    "directory = sys.argv[1]\n"
    "data = os.path.dirname(directory)\n"
    "os.makedirs(data, exist_ok=True)\n"
    "power_cut.install(data, data + '.image')\n"
    "config = LogConfig(segment_bytes=8 * 1024, index_interval_bytes=1024, flush_policy='always',\n"
    "                   flush_interval_ms=5, retention_bytes=-1, retention_ms=-1)\n"
    "plog = PartitionLog.open(directory, config, 0)\n"
    "for base in range(60):\n"
    "    plog.append(encode_batch(BatchHeader(base, 0, 0, -1, -1, -1, 1, 0, base, base), b'x' * 500), base)\n"
    "plog.truncate_to(int(sys.argv[2]))\n"
    "print('truncated', plog.log_end_offset, flush=True)\n"
    "os.kill(os.getpid(), 9)\n"  # no close(): a power cut follows
)


@pytest.mark.parametrize("cut_at", [57, 20])  # inside the active segment; across whole segments
def test_a_truncation_stays_truncated_after_a_power_cut(tmp_path: Path, cut_at: int) -> None:
    """A follower's cut of a divergent tail must be durable before it fetches on: a tail that
    came back after a power loss would be taken as this replica's own data again (the cut's
    ftruncate and the unlinks of whole segments were not synced; found by the simulation's
    --strict-truncation mode)."""
    directory = tmp_path / "data" / "p0"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", TRUNCATOR, str(directory), str(cut_at)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert f"truncated {cut_at}" in done.stdout, done.stderr
    restore(directory.parent, str(directory.parent) + ".image", seed=5)
    from semel.storage.log import LogConfig, PartitionLog

    plog = PartitionLog.open(directory, LogConfig(segment_bytes=8 * 1024, index_interval_bytes=1024), 0)
    try:
        assert plog.log_end_offset == cut_at
    finally:
        plog.close()
