"""The JSONL run journal: records round-trip, artifacts land beside it, paths stay inside it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eclm.tracking import RECORD_KINDS, RunJournal, read_journal
from eclm.tracking.journal import unique_journal_path


def test_records_round_trip_in_order(tmp_path):
    journal = RunJournal(tmp_path / "run.jsonl")
    payloads = [("params", {"lr": "0.1"}, None), ("metrics", {"acc": np.float32(0.5)}, 3), ("end", {}, None)]

    for kind, data, step in payloads:
        journal.append(kind, data, step)
    records = read_journal(journal.path)

    assert [(r["kind"], r["step"]) for r in records] == [(k, s) for k, _, s in payloads]
    assert records[1]["data"] == {"acc": 0.5}
    assert all(set(r) == {"id", "kind", "step", "data", "time"} for r in records)
    assert len({r["id"] for r in records}) == len(records)
    assert records[0]["time"] <= records[-1]["time"]


@pytest.mark.parametrize(
    ("kind", "data", "error"),
    [("bogus", {}, ValueError), ("metrics", {"x": object()}, TypeError)],
)
def test_bad_records_are_rejected_and_not_written(tmp_path, kind, data, error):
    journal = RunJournal(tmp_path / "run.jsonl")

    with pytest.raises(error):
        journal.append(kind, data)

    assert not journal.path.exists() or read_journal(journal.path) == []


def test_artifacts_are_stored_beside_the_journal_by_artifact_path(tmp_path):
    journal = RunJournal(tmp_path / "run.jsonl")

    local = journal.write_artifact("rounds/round_003/merge_report.json", b"{}")

    assert local == tmp_path / "run" / "rounds" / "round_003" / "merge_report.json"
    assert local.read_bytes() == b"{}"
    assert journal.relative(local) == "run/rounds/round_003/merge_report.json"


@pytest.mark.parametrize(
    "path", ["", "/abs.json", "../up.json", "a/../b.json", "a//b.json", "a\\b.json", "./a"]
)
def test_artifact_paths_cannot_escape_the_journal_folder(tmp_path, path):
    journal = RunJournal(tmp_path / "run.jsonl")

    with pytest.raises(ValueError, match="artifact_path"):
        journal.write_artifact(path, b"x")


def test_unique_journal_path_never_reuses_a_journal(tmp_path):
    first = unique_journal_path(tmp_path, "campaign a/b")
    first.write_text("")
    second = unique_journal_path(tmp_path, "campaign a/b")

    assert first.name == "campaign_a_b.jsonl"
    assert second != first and not second.exists()


def test_read_journal_names_the_corrupt_line(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps({"kind": "end"}) + "\n{not json\n")

    with pytest.raises(ValueError, match=":2:"):
        read_journal(path)


def test_record_kinds_cover_the_tracker_vocabulary():
    assert {"params", "metrics", "epoch_metrics", "artifact", "model_version", "stored", "end"} <= RECORD_KINDS


def test_discarding_a_staged_file_removes_the_folders_it_empties(tmp_path):
    journal = RunJournal(tmp_path / "run.jsonl")
    kept = journal.write_artifact("rounds/round_001/a.json", b"{}")
    dropped = journal.write_artifact("models/cloud/v1/model.safetensors", b"x")

    journal.discard(dropped)

    assert kept.is_file() and not (tmp_path / "run" / "models").exists()
