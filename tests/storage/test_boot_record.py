"""`semel.storage.boot_record`: a machine restart is told apart from a process restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from semel.storage import boot_record, power_cut


def test_a_fresh_data_dir_and_a_process_restart_lost_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(power_cut.ENV, raising=False)
    assert not boot_record.machine_restarted(tmp_path)  # first start
    (tmp_path / "logs" / "t-0").mkdir(parents=True)
    assert not boot_record.machine_restarted(tmp_path)  # same boot: the page cache survived


def test_another_boot_id_is_a_machine_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(power_cut.ENV, raising=False)
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("first\n")
    monkeypatch.setattr(boot_record, "BOOT_ID_PATH", boot_id)
    data = tmp_path / "data"
    data.mkdir()
    assert not boot_record.machine_restarted(data)
    boot_id.write_text("second\n")
    assert boot_record.machine_restarted(data)
    boot_record.loss_reported(data)  # the registration that said so committed
    assert not boot_record.machine_restarted(data)  # recorded: the next process restart is clean


def test_a_restart_is_told_until_the_quorum_has_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulation seed 509: the broker lost power, started (the record now names the new boot),
    # could not reach the quorum and was killed; started again in the same boot it registered
    # without lost_unsynced_writes and was re-elected, the last ISR member, on its short log.
    monkeypatch.delenv(power_cut.ENV, raising=False)
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("first\n")
    monkeypatch.setattr(boot_record, "BOOT_ID_PATH", boot_id)
    data = tmp_path / "data"
    data.mkdir()
    assert not boot_record.machine_restarted(data)
    boot_id.write_text("second\n")
    assert boot_record.machine_restarted(data)
    # killed before its registration committed: the next start in the same boot still says so
    assert boot_record.machine_restarted(data)
    assert boot_record.machine_restarted(data)
    boot_record.loss_reported(data)
    assert not boot_record.machine_restarted(data)


def test_unknown_boot_ids_and_records_count_as_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(power_cut.ENV, raising=False)
    monkeypatch.setattr(boot_record, "BOOT_ID_PATH", tmp_path / "missing")
    data = tmp_path / "data"
    (data / "logs" / "t-0").mkdir(parents=True)  # an older build's data dir: no record
    assert boot_record.machine_restarted(data)
    (data / boot_record.RECORD_NAME).write_bytes(b"garbage")
    assert boot_record.machine_restarted(data)


def test_each_simulated_power_cut_is_a_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(power_cut.ENV, "1")
    data = tmp_path / "data"
    data.mkdir()
    assert not boot_record.machine_restarted(data)
    power_cut._cuts_file(data).write_text("1\n")  # what cut() leaves beside the data dir
    assert power_cut.cuts_of(data) == 1
    assert boot_record.machine_restarted(data)
    boot_record.loss_reported(data)
    assert not boot_record.machine_restarted(data)
