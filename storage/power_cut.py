"""A test-only power-cut layer: what a broker's data dir holds after its machine loses power.

Selected only by the environment variable `SEMEL_TEST_POWER_CUT=1` (the test harnesses and the
chaos runner set it; no config file, flag or CLI does, and any other value is refused). A broker
that finds it set logs a warning at start (`power cut layer ON (test only)`) and records, next
to its real writes, a **durable image** of its data dir in `<data dir>.durable` (a sibling: the
same filesystem, which the hard links below need).

Model (POSIX, strict; what ext4/xfs promise, not what they usually do):
  * a file's bytes are durable once an fsync/fdatasync/msync of the file returned;
  * a directory's entries (creates, renames, unlinks) are durable once an fsync of the
    directory returned; an entry made durable names the inode it named at that fsync;
  * everything in the data dir when the broker started is durable (the boot state: after the
    previous power cut it *is* the durable image; after a clean stop the OS had time to write).

How: `os.fsync` and `os.fdatasync` are wrapped (every Python file write of the broker syncs
through them; `PartitionLog`, checkpoints, index files, the aborted index, the raft journal's
snapshot and `.meta`), and the broker wraps the raft journal's msync (`record_path`). After the
real sync returns, the wrapper copies what became durable into the image: the file's bytes
(incrementally when it only grew), or the directory's listing (name -> inode). Every inode the
image names is pinned by a hard link, so the kernel cannot reuse its number.

Why this shape and not "keep every write in the process until fsync": writes, reads, mmap and
C code (RocksDB, the mmap'd raft journal) all go on hitting the real files unchanged, so the
broker under test runs its production I/O paths; only the record of what is durable is added.
SIGKILL followed by `restore()` leaves exactly the durable image, which is what a power cut
leaves. `torn=True` lets each file keep, beyond its durable bytes, a random prefix of the bytes
appended after its last sync (a torn final write, or writeback that got further).

RocksDB (`kv/`) is opaque here: it does its own I/O in C++. The broker opens it without sync
writes, so a power cut can drop any suffix of its write-ahead log (RocksDB fsyncs SST files,
the MANIFEST and CURRENT itself on flush and compaction). `restore()` models exactly that: it
cuts every WAL file (`*.log`) of `kv/` at a seeded random length (0 included). Everything in
it is rebuilt from the replicated logs (docs/storage.md, "Power loss").
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENV = "SEMEL_TEST_POWER_CUT"
KV_DIR = "kv"  # RocksDB: restored as found, its WAL cut
UNMODELLED = frozenset({"broker.log"})  # the harness's stderr file: not the broker's data
_CHUNK_BYTES = 1 << 20
_TAIL_CHECK_BYTES = 4096


class DurableImage:
    """The record of what is durable in `data_dir`, kept in `image_dir`. Thread-safe."""

    def __init__(self, data_dir: Path, image_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.image_dir = image_dir.resolve()
        self._lock = threading.Lock()
        self._sizes: dict[int, int] = {}  # inode -> bytes in data/<ino>
        self._rewritten: set[int] = set()  # inodes truncated since their last record: copy whole
        self.records = 0

    # --- boot -----------------------------------------------------------------------------
    def boot(self) -> None:
        """Forget any previous image and record the data dir as it is now, all durable.

        Built under a temporary name and renamed into place when whole: a broker killed while
        booting has no image, and `restore()` then knows its data dir is untouched (nothing
        writes to it before the layer is installed)."""
        if os.stat(self.data_dir).st_dev != os.stat(self.image_dir.parent).st_dev:
            raise RuntimeError(f"the power cut image {self.image_dir} is not on the filesystem of {self.data_dir}")
        final = self.image_dir
        self.image_dir = final.with_name(final.name + ".booting")
        shutil.rmtree(final, ignore_errors=True)
        shutil.rmtree(self.image_dir, ignore_errors=True)
        for sub in ("pins", "data", "dirs"):
            (self.image_dir / sub).mkdir(parents=True)
        (self.image_dir / "root").write_text(str(os.stat(self.data_dir).st_ino))
        for dirpath, dirnames, filenames in os.walk(self.data_dir):
            here = Path(dirpath)
            if here == self.data_dir:
                dirnames[:] = [d for d in dirnames if d != KV_DIR and d not in UNMODELLED]
            self._record_dir(here)
            for name in filenames:
                if here == self.data_dir and name in UNMODELLED:
                    continue
                fd = os.open(here / name, os.O_RDONLY)
                try:
                    self._record_file(fd, full=True)
                finally:
                    os.close(fd)
        os.rename(self.image_dir, final)
        self.image_dir = final

    # --- hooks -------------------------------------------------------------------------------
    def on_sync(self, fd: int) -> None:
        """After a successful fsync/fdatasync of `fd`."""
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                path = Path(os.readlink(f"/proc/self/fd/{fd}"))
                if self._modelled(path):
                    with self._lock:
                        self._record_dir(path)
            elif stat.S_ISREG(st.st_mode):
                path = Path(os.readlink(f"/proc/self/fd/{fd}").removesuffix(" (deleted)"))
                if self._modelled(path.parent) and path.name not in UNMODELLED:
                    with self._lock:
                        self._record_file(fd, full=False)
        except OSError:
            log.exception("power cut layer: could not record the sync of fd %d", fd)
            raise

    def record_path(self, path: str | Path, *, full: bool = True) -> None:
        """After a sync the wrappers do not see (an msync of an mmap'd file)."""
        fd = os.open(path, os.O_RDONLY)
        try:
            with self._lock:
                self._record_file(fd, full=full)
        finally:
            os.close(fd)

    def on_truncate(self, fd: int) -> None:
        with self._lock:
            self._rewritten.add(os.fstat(fd).st_ino)

    # --- recording -----------------------------------------------------------------------------
    def _modelled(self, directory: Path) -> bool:
        try:
            rel = directory.resolve().relative_to(self.data_dir)
        except ValueError:
            return False
        return not rel.parts or rel.parts[0] not in (KV_DIR, *UNMODELLED)

    def _pin(self, ino: int, source: str) -> None:
        pin = self.image_dir / "pins" / str(ino)
        if not os.path.lexists(pin):
            try:
                os.link(source, pin, follow_symlinks=False)
            except FileNotFoundError:
                pass  # unlinked meanwhile: its number may be reused, but nothing names it
            except FileExistsError:
                pass

    def _record_dir(self, path: Path) -> None:
        listing: dict[str, list[object]] = {}
        with os.scandir(path) as it:
            for entry in it:
                if path == self.data_dir and entry.name in UNMODELLED:
                    continue
                if entry.name.startswith(".nfs"):
                    continue
                try:
                    ino = entry.inode()
                    if entry.is_dir(follow_symlinks=False):
                        listing[entry.name] = ["d", ino]
                    elif entry.is_file(follow_symlinks=False):
                        self._pin(ino, entry.path)
                        listing[entry.name] = ["f", ino]
                except FileNotFoundError:
                    continue
        ino = os.stat(path).st_ino
        self._write_atomic(self.image_dir / "dirs" / f"{ino}.json", json.dumps(listing).encode())
        self.records += 1

    def _record_file(self, fd: int, *, full: bool) -> None:
        st = os.fstat(fd)
        if st.st_nlink == 0:
            return  # deleted: no name can bring it back
        ino = st.st_ino
        self._pin(ino, os.readlink(f"/proc/self/fd/{fd}"))
        rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)  # `fd` may be write-only
        try:
            size = os.fstat(rfd).st_size
            target = self.image_dir / "data" / str(ino)
            have = self._sizes.get(ino)
            if not full and have is not None and ino not in self._rewritten and size >= have and self._tail_matches(
                    rfd, target, have):
                with open(target, "ab") as out:
                    self._copy(rfd, have, size, out.write)
            else:
                tmp = target.with_suffix(".tmp")
                with open(tmp, "wb") as out:
                    self._copy(rfd, 0, size, out.write)
                os.replace(tmp, target)
        finally:
            os.close(rfd)
        self._rewritten.discard(ino)
        self._sizes[ino] = size
        self.records += 1

    @staticmethod
    def _tail_matches(fd: int, target: Path, have: int) -> bool:
        n = min(_TAIL_CHECK_BYTES, have)
        with open(target, "rb") as f:
            f.seek(have - n)
            recorded = f.read(n)
        return len(recorded) == n and os.pread(fd, n, have - n) == recorded

    @staticmethod
    def _copy(fd: int, start: int, end: int, write: Callable[[bytes], object]) -> None:
        pos = start
        while pos < end:
            chunk = os.pread(fd, min(_CHUNK_BYTES, end - pos), pos)
            if not chunk:
                break  # truncated meanwhile
            write(chunk)
            pos += len(chunk)

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)


_image: DurableImage | None = None


def install(data_dir: str | Path, image_dir: str | Path) -> DurableImage:
    """Record the boot state and wrap `os.fsync`, `os.fdatasync` and `os.ftruncate`."""
    global _image
    if _image is not None:
        raise RuntimeError("power cut layer installed twice")
    image = DurableImage(Path(data_dir), Path(image_dir))
    image.boot()
    real_fsync, real_fdatasync, real_ftruncate = os.fsync, os.fdatasync, os.ftruncate

    def fsync(fd: Any) -> None:  # os.fsync accepts an object with fileno() too
        real_fsync(fd)
        image.on_sync(fd if isinstance(fd, int) else fd.fileno())

    def fdatasync(fd: Any) -> None:
        real_fdatasync(fd)
        image.on_sync(fd if isinstance(fd, int) else fd.fileno())

    def ftruncate(fd: int, length: int) -> None:
        real_ftruncate(fd, length)
        image.on_truncate(fd)

    os.fsync = fsync
    os.fdatasync = fdatasync
    os.ftruncate = ftruncate
    _image = image
    log.warning("power cut layer ON (test only): durable image of %s kept in %s", image.data_dir,
                image.image_dir)
    return image


def installed() -> DurableImage | None:
    return _image


def image_dir_for(data_dir: str | Path) -> Path:
    data_dir = Path(data_dir).resolve()
    return data_dir.with_name(data_dir.name + ".durable")


def install_from_env(data_dir: str | Path) -> DurableImage | None:
    value = os.environ.get(ENV)
    if not value:
        return None
    if value != "1":
        raise SystemExit(f"{ENV}={value!r}: only 1 turns the test-only power cut layer on")
    return install(data_dir, image_dir_for(data_dir))


def cut(data_dir: str | Path, seed: int, *, torn: bool = False) -> dict[str, int]:
    """`restore()` of a broker that ran with the layer (its process already killed). Each cut
    also counts as a boot of the broker's machine (`cuts_of`, `semel.storage.boot_record`)."""
    stats = restore(data_dir, image_dir_for(data_dir), seed, torn=torn)
    counter = _cuts_file(data_dir)
    counter.write_text(f"{cuts_of(data_dir) + 1}\n")
    return stats


def cuts_of(data_dir: str | Path) -> int:
    """How many times `cut()` cut `data_dir` (kept beside it, outside what a cut rebuilds)."""
    try:
        return int(_cuts_file(data_dir).read_text())
    except (OSError, ValueError):
        return 0


def _cuts_file(data_dir: str | Path) -> Path:
    data_dir = Path(data_dir).resolve()
    return data_dir.with_name(data_dir.name + ".cuts")


# --- after the process is dead -----------------------------------------------------------------
def restore(data_dir: str | Path, image_dir: str | Path, seed: int, *, torn: bool = False) -> dict[str, int]:
    """Turn `data_dir` (its broker dead) into what a power cut would have left. Returns counts."""
    data_dir, image_dir = Path(data_dir), Path(image_dir)
    rng = random.Random(seed)
    stats = {"files": 0, "dirs": 0, "torn_files": 0, "torn_bytes": 0, "wal_bytes_cut": 0, "lost_bytes": 0}
    shutil.rmtree(image_dir.with_name(image_dir.name + ".booting"), ignore_errors=True)
    if not image_dir.exists():  # killed before the layer finished booting: nothing was written since
        stats["not_booted"] = 1  # the last restore (or ever)
        return stats
    root_ino = int((image_dir / "root").read_text())
    if os.stat(data_dir).st_ino != root_ino:
        raise RuntimeError(f"{data_dir} is not the directory the image of {image_dir} recorded")
    staging = data_dir.parent / (data_dir.name + ".power-cut")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    _build(staging, root_ino, data_dir, image_dir, rng, torn, stats, root=True)
    for dirpath, dirnames, filenames in os.walk(data_dir):  # whole files the cut dropped count as lost
        here = Path(dirpath)
        if here == data_dir:
            dirnames[:] = [d for d in dirnames if d != KV_DIR and d not in UNMODELLED]
        for name in filenames:
            rel = (here / name).relative_to(data_dir)
            if not (here == data_dir and name in UNMODELLED) and not (staging / rel).exists():
                stats["lost_bytes"] += (here / name).stat().st_size
    for name in (KV_DIR, *UNMODELLED):  # kept as found
        if (data_dir / name).exists():
            os.replace(data_dir / name, staging / name)
    for entry in list(data_dir.iterdir()):
        (shutil.rmtree if entry.is_dir() and not entry.is_symlink() else os.unlink)(entry)
    for entry in list(staging.iterdir()):
        os.replace(entry, data_dir / entry.name)
    staging.rmdir()
    kv = data_dir / KV_DIR
    if kv.is_dir():
        for wal in sorted(kv.glob("*.log")):
            size = wal.stat().st_size
            keep = rng.randint(0, size)
            os.truncate(wal, keep)
            stats["wal_bytes_cut"] += size - keep
    shutil.rmtree(image_dir, ignore_errors=True)  # the next boot records a fresh one
    return stats


def _build(dst: Path, dir_ino: int, live: Path | None, image_dir: Path, rng: random.Random, torn: bool,
           stats: dict[str, int], *, root: bool) -> None:
    listing_file = image_dir / "dirs" / f"{dir_ino}.json"
    if not listing_file.exists():
        return  # created, never synced: empty
    listing = json.loads(listing_file.read_text())
    stats["dirs"] += 1
    for name, (kind, ino) in sorted(listing.items()):
        if root and name in (KV_DIR, *UNMODELLED):
            continue  # kept as found by restore()
        live_path = live / name if live is not None else None
        if kind == "d":
            (dst / name).mkdir()
            same = live_path is not None and _ino(live_path) == ino
            _build(dst / name, ino, live_path if same else None, image_dir, rng, torn, stats, root=False)
            continue
        data_file = image_dir / "data" / str(ino)
        content = data_file.read_bytes() if data_file.exists() else b""
        if live_path is not None and _ino(live_path) == ino:
            live_size = live_path.stat().st_size
            stats["lost_bytes"] += max(0, live_size - len(content))
            if torn and live_size > len(content):
                with open(live_path, "rb") as f:
                    current = f.read()
                if current.startswith(content):
                    extra = rng.randint(0, len(current) - len(content))
                    if extra:
                        stats["torn_files"] += 1
                        stats["torn_bytes"] += extra
                    content = current[: len(content) + extra]
        (dst / name).write_bytes(content)
        stats["files"] += 1


def _ino(path: Path) -> int | None:
    try:
        return os.lstat(path).st_ino
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise
