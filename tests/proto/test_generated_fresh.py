"""The committed generated code must be exactly what proto/generate.py produces."""

import importlib.util
import pathlib
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load_generator():
    spec = importlib.util.spec_from_file_location("semel_proto_generate", ROOT / "proto" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_code_is_fresh():
    gen = _load_generator()
    assert gen.proto_files(), "no .proto files found"
    with tempfile.TemporaryDirectory() as tmp:
        gen.generate(pathlib.Path(tmp))
        stale = [
            name
            for name in gen.generated_names()
            if not (ROOT / "proto" / name).exists()
            or (ROOT / "proto" / name).read_bytes() != (pathlib.Path(tmp) / name).read_bytes()
        ]
    assert not stale, f"generated code is stale, run `make proto`: {stale}"


def test_error_codes_are_never_renumbered():
    from semel.v1 import common_pb2

    # A sample of the contract: these numbers are on the wire forever.
    fixed = {"NONE": 0, "NOT_LEADER_OR_FOLLOWER": 6, "OUT_OF_ORDER_SEQUENCE": 13, "PRODUCER_FENCED": 16,
             "UNSTABLE_OFFSET_COMMIT": 42, "TOO_MANY_PRODUCERS": 52}
    for name, number in fixed.items():
        assert common_pb2.ErrorCode.Value(name) == number
