"""docs/examples/node/transaction.js, a raw-gRPC client in Node.js written from docs/protocol.md,
runs against a real cluster: produce idempotently, a committed and an aborted transaction,
read_committed checked by the example itself (it exits 1 on any mismatch).

Its npm dependencies are installed here with `npm ci` from the committed package-lock.json into
docs/examples/node/node_modules (git-ignored), so a fresh clone needs nothing but Node.js and
npm; without them on the PATH the test is skipped and says why."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

NODE_DIR = pathlib.Path(__file__).resolve().parents[2] / "docs" / "examples" / "node"
EXAMPLE = NODE_DIR / "transaction.js"
NPM_CI_TIMEOUT_S = 300
# npm's own words for "the registry cannot be reached": only then is a failed install a skip
NETWORK_ERRORS = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT", "ECONNRESET", "ENETUNREACH")


def _installed_lock_matches() -> bool:
    """node_modules was installed by `npm ci` from the current package-lock.json (npm keeps a
    copy of the lock it installed as node_modules/.package-lock.json)."""
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    return installed.exists() and installed.stat().st_mtime >= (NODE_DIR / "package-lock.json").stat().st_mtime


@pytest.fixture(scope="module")
def node_example() -> list[str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js and npm are needed for the Node.js example (docs/examples/node): "
                    f"node={node}, npm={npm} on the PATH")
    if not _installed_lock_matches():
        env = dict(os.environ, npm_config_update_notifier="false", npm_config_fund="false",
                   npm_config_audit="false")
        run = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True,
                             timeout=NPM_CI_TIMEOUT_S, env=env)
        out = run.stdout.decode() + run.stderr.decode()
        if run.returncode != 0:
            if any(code in out for code in NETWORK_ERRORS):
                pytest.skip(f"npm ci in {NODE_DIR} could not reach the npm registry:\n{out[-2000:]}")
            pytest.fail(f"npm ci in {NODE_DIR} failed ({run.returncode}):\n{out[-4000:]}")
    return [node, str(EXAMPLE)]


def test_the_nodejs_grpc_example_runs_clean(node_example, shared_cluster):
    run = subprocess.run([*node_example, "--bootstrap", shared_cluster.bootstrap.split(",")[0]],
                         capture_output=True, timeout=180)
    out = run.stdout.decode()
    print(out)  # the steps and any retries, shown when the test fails
    assert run.returncode == 0, out + run.stderr.decode()
    for line in ("murmur2 matches the 5 test vectors", "each resend answered duplicate with its original offsets",
                 "transaction 1 committed", "transaction 2 aborted",
                 "read_committed sees the idempotent records and transaction 1, never transaction 2",
                 "the records below the position were skipped"):
        assert line in out, out
    assert out.rstrip().endswith("ok"), out
