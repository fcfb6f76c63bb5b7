"""`semel log dump PATH`: the batches of one segment file, for debugging.

Reads the file only (never opens it for writing, never repairs it), so it is safe on a live
broker's data directory. The walk and the decoders are the storage engine's
(`semel.storage.segment_dump`). Exit codes: 0 every batch is whole, continues the offsets and
passes its CRC; 1 the dump found a problem (CRC mismatch, offset gap, torn tail); 2 the file
cannot be read or is not a segment.
"""

from __future__ import annotations

import argparse
import json
import mmap
import sys
from collections.abc import Mapping
from pathlib import Path

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_NOT_A_SEGMENT = 2


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("log", help="inspect log files on disk")
    lsub = p.add_subparsers(dest="log_command", metavar="SUBCOMMAND")
    dump = lsub.add_parser(
        "dump",
        help="print a segment file's batches (offsets, producer, sequence, markers, CRC)",
        description="Print every batch of one segment file (DATA_DIR/logs/TOPIC-PARTITION.TOPIC_ID/<base offset>.log): "
        "offsets, leader epoch, producer id/epoch, base sequence, record count, timestamps, "
        "transactional/control flags, the marker of control batches, and whether the CRC matches. "
        "Exit 0: all batches valid; 1: problems found (listed); 2: not a readable segment.",
    )
    dump.add_argument("path", metavar="PATH", help="a segment file (*.log)")
    dump.add_argument("--json", action="store_true",
                      help="JSON lines: one object per batch, then one {\"summary\": ...} object")
    dump.set_defaults(func=_dump)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _dump(args: argparse.Namespace) -> int:
    from semel.storage.segment import parse_segment_name
    from semel.storage.segment_dump import BatchInfo, NotASegmentError, batch_fields, walk_segment

    path = Path(args.path)
    try:
        mapped = _map(path)
    except OSError as exc:
        print(f"semel log dump: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_NOT_A_SEGMENT
    content = memoryview(mapped if mapped is not None else b"")
    expected_base = parse_segment_name(path.name)
    batches = records = problems = 0
    try:
        if not args.json:
            named = f"base offset {expected_base} (from the file name)" if expected_base is not None else \
                "no base offset in the file name (expected <20 digits>.log)"
            print(f"segment {path}: {len(content)} bytes, {named}")
        for item in walk_segment(content, expected_base):
            if isinstance(item, BatchInfo):
                fields = batch_fields(item)
                batches += 1
                records += item.header.record_count
                problems += len(item.problems)
                print(json.dumps(fields) if args.json else _text_line(fields))
                continue
            if item.stop_reason is not None:
                problems += 1
            summary = {"batches": batches, "records": records, "valid_bytes": item.valid_bytes,
                       "size_bytes": item.size_bytes, "problems": problems, "stop_reason": item.stop_reason}
            if args.json:
                print(json.dumps({"summary": summary}))
            else:
                if item.stop_reason is not None:
                    print(f"STOPPED: {item.stop_reason}")
                print(_text_line(summary))
    except NotASegmentError as exc:
        print(f"semel log dump: {path} is not a Semel segment file: {exc}", file=sys.stderr)
        return EXIT_NOT_A_SEGMENT
    finally:
        content.release()
        if mapped is not None:
            mapped.close()
    return EXIT_PROBLEMS if problems else EXIT_OK


def _map(path: Path) -> mmap.mmap | None:
    """The file's bytes, mapped read-only (a segment can be a gigabyte); None for an empty file."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            return None
        return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)


def _text_line(fields: Mapping[str, object]) -> str:
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, list):
            value = "; ".join(str(v) for v in value)
            parts.append(f"{key}=[{value}]")
            continue
        parts.append(f"{key}={value}")
    return " ".join(parts)
