"""docs/protocol.md states numbers a client in another language relies on: the limits, the topic
configs, the murmur2 test vectors. Each is checked here against the code it describes (and the
limits cited in the .proto comments too), so the documentation cannot drift from the broker."""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
import re

from semel import limits
from semel.client.partitioner import murmur2, partition_for_key
from semel.cluster.metadata import state as md
from semel.v1 import common_pb2 as pb

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "protocol.md").read_text()
PROTOS = sorted((ROOT / "proto" / "semel" / "v1").glob("*.proto"))


def section(title: str) -> str:
    """The text of the `## title` section (up to the next `## ` heading)."""
    start = DOC.index(f"\n## {title}\n")
    end = DOC.find("\n## ", start + 1)
    return DOC[start: end if end >= 0 else len(DOC)]


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the first Markdown table in `text`, as lists of stripped cells."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    assert len(rows) >= 3 and set(rows[1].replace("|", "").strip()) <= set("- "), "a header and a rule"
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def numbers(cell: str) -> list[int]:
    """The integers a cell states outside parentheses and code spans (not the 8 of UTF-8):
    '1,024 .. 1,073,741,824 (1 GiB)' -> [1024, 1073741824]."""
    outside = re.sub(r"\([^)]*\)|`[^`]*`", "", cell)
    return [int(n.replace(",", "")) for n in re.findall(r"(?<![\w-])-?\d[\d,]*", outside)]


def resolve(name: str) -> int:
    """`MAX_X` is semel.limits.MAX_X; a dotted name is module.attribute."""
    if "." not in name:
        return int(getattr(limits, name))
    module, _, attribute = name.rpartition(".")
    return int(getattr(importlib.import_module(module), attribute))


def test_every_limit_in_the_doc_is_the_codes_value():
    rows = table_rows(section("Limits"))
    assert len(rows) >= 30
    for bound, value, _beyond, names_cell in rows:
        names = re.findall(r"`([A-Za-z0-9_.]+)`", names_cell)
        values = numbers(value)
        assert names and len(names) == len(values), f"{bound!r}: {names} vs {values}"
        for name, stated in zip(names, values):
            assert resolve(name) == stated, f"docs/protocol.md, Limits: {name} is {resolve(name)}, the doc says {stated}"


def test_the_doc_cites_no_limit_without_its_row():
    """A bound named anywhere in the doc has its value in the Limits table (the doc's readers do
    not have semel/limits.py at hand)."""
    tabled = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", section("Limits")))
    cited = {name for name in re.findall(r"\b([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)\b", DOC) if hasattr(limits, name)}
    assert cited - tabled == set()


def test_limits_cited_in_proto_comments_state_the_codes_value():
    """Every `limits.NAME` in a .proto comment reads `VALUE [unit] (semel.limits.NAME)`."""
    checked = 0
    for proto in PROTOS:
        text = proto.read_text()
        for match in re.finditer(r"(?:semel\.)?limits\.([A-Z][A-Z0-9_]+)", text):
            before = text[max(0, match.start() - 40): match.start()]
            stated = re.search(r"(\d+)(?: [A-Za-z0-9-]+){0,2} \($", before)
            assert stated and match.group(0).startswith("semel."), \
                f"{proto.name}: write '<value> (semel.limits.{match.group(1)})', found '...{before}{match.group(0)}'"
            assert int(stated.group(1)) == resolve(match.group(1)), f"{proto.name}: {match.group(1)}"
            checked += 1
    assert checked >= 10


def test_topic_configs_table_is_what_the_broker_parses():
    rows = table_rows(section("Producing").split("### Topic configs", 1)[1])
    keys = {row[0].strip("`"): row for row in rows}
    assert set(keys) == {f.name for f in dataclasses.fields(md.TopicConfig)}
    defaults = md.TopicConfig()
    for key in ("retention_ms", "retention_bytes", "segment_bytes", "segment_ms"):
        assert numbers(keys[key][3]) == [getattr(defaults, key)], key
    low, high = numbers(keys["segment_bytes"][2])
    assert (low, high) == (limits.MIN_SEGMENT_BYTES, limits.MAX_SEGMENT_BYTES)
    for value, ok in ((low, True), (high, True), (low - 1, False), (high + 1, False)):
        code, _ = md.parse_topic_config([("segment_bytes", str(value))], 3)
        assert (code == pb.NONE) == ok, value
    for spelling in ("true", "FALSE", "1", "0", "yes", "No"):
        assert md.parse_topic_config([("unclean_leader_election", spelling)], 3)[0] == pb.NONE
    assert md.parse_topic_config([("min.insync.replicas", "2")], 3)[0] == pb.INVALID_CONFIG
    for rf, expected in ((3, 2), (2, 1), (1, 1)):  # "2 if the replication factor is 3 or more, else 1"
        assert md.parse_topic_config([], rf)[1].min_insync_replicas == expected


def test_murmur2_vectors_in_the_doc_match_the_python_partitioner():
    rows = table_rows(section("Key partitioning"))
    assert len(rows) >= 10
    for text, hex_bytes, hashed, of3, of16 in rows:
        key = bytes.fromhex(hex_bytes.strip("`"))
        if text.startswith("`"):
            assert key == text.strip("`").encode("utf-8"), f"{text}: the hex column is its UTF-8 bytes"
        assert murmur2(key) == int(hashed), f"murmur2({key!r})"
        if key:
            assert [partition_for_key(key, 3), partition_for_key(key, 16)] == [int(of3), int(of16)], repr(key)
        else:
            assert of3 == of16 == "", "an empty key is no key: never hashed to a partition"


def test_the_node_example_checks_the_same_vectors():
    """docs/examples/node/transaction.js carries the doc's vectors to check its own murmur2."""
    js = (ROOT / "docs" / "examples" / "node" / "transaction.js").read_text()
    in_js = {(text, int(value)) for text, value in re.findall(r"\['([^']*)', (-?\d+)\]", js)}
    assert len(in_js) >= 5
    for text, value in in_js:
        assert murmur2(text.encode()) == value, text
