"""The sweep result log: append-only, torn lines, resume/refuse, old format, state snapshots, shards."""

import json
import os

import pytest
import torch

from interp.errors import SettingError
from interp.sweep import Checkpoint, SweepConfigMismatch, SweepErrors, parse_shard, read_sweep

CFG = {"model": "m", "window": 10, "dataset": "facts.json"}


def test_add_is_durable_and_resumes(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    ck = Checkpoint(tmp_path, CFG)
    n0 = len(synced)
    ck.add(3, {"p": 0.5})
    ck.add("x", [1, 2])
    assert len(synced) == n0 + 2  # one fsync per record, before add returns
    again = Checkpoint(tmp_path, dict(CFG))
    assert 3 in again and "x" in again and "4" not in again
    assert dict(again.results()) == {"3": {"p": 0.5}, "x": [1, 2]}
    assert again.n_torn == 0


def test_torn_last_line_is_ignored_and_never_the_lines_after_it(tmp_path):
    ck = Checkpoint(tmp_path, CFG)
    ck.add(0, {"v": 0})
    ck.add(1, {"v": 1})
    path = tmp_path / "items.jsonl"
    before = path.read_bytes()
    with open(path, "ab") as f:  # a kill in the middle of writing item 2
        f.write(b'{"id": "2", "result": {"v"')
    ck = Checkpoint(tmp_path, CFG)
    assert sorted(ck.done) == ["0", "1"] and ck.n_torn == 1
    assert path.read_bytes().startswith(before)  # nothing rewritten, nothing truncated
    ck.add(2, {"v": 2})
    ck.add(3, {"v": 3})
    ck = Checkpoint(tmp_path, CFG)  # the fragment is now a middle line: skipped, later lines kept
    assert ck.done == {"0": {"v": 0}, "1": {"v": 1}, "2": {"v": 2}, "3": {"v": 3}}
    assert ck.n_torn == 1
    assert path.read_bytes().startswith(before)


def test_damaged_middle_line_keeps_the_rest(tmp_path):
    path = tmp_path / "items.jsonl"
    (tmp_path / "config.json").write_text(json.dumps(CFG))
    path.write_bytes(b'{"id": "a", "result": 1}\n\xff\xfe garbage\n{"id": "b"}\n{"id": "c", "result": 3}\n')
    ck = Checkpoint(tmp_path, CFG)
    assert ck.done == {"a": 1, "c": 3} and ck.n_torn == 2


def test_old_format_resumes(tmp_path):
    # what interp wrote before this log: config.json (indent=1) + {"id","result"} lines
    (tmp_path / "config.json").write_text(json.dumps(json.loads(json.dumps(CFG, default=str)), indent=1))
    (tmp_path / "items.jsonl").write_text('{"id": "row1", "result": {"p_clean": 0.25}}\n')
    ck = Checkpoint(tmp_path, CFG)
    assert "row1" in ck and ck.get("row1") == {"p_clean": 0.25}


def test_other_settings_or_model_are_refused(tmp_path):
    Checkpoint(tmp_path, CFG).add(0, 1)
    with pytest.raises(SweepConfigMismatch, match=r"other settings \(window: 10 → 9\).*same settings to resume"):
        Checkpoint(tmp_path, {**CFG, "window": 9})
    with pytest.raises(SweepConfigMismatch, match="holds a sweep of model 'm', not 'other'.*another --out"):
        Checkpoint(tmp_path, {**CFG, "model": "other"})


def test_damaged_config(tmp_path):
    (tmp_path / "config.json").write_text('{"model": "m", "win')  # torn by an old writer
    ck = Checkpoint(tmp_path, CFG)  # no results yet: safe to rewrite
    assert json.loads((tmp_path / "config.json").read_text()) == CFG
    ck.add(0, 1)
    (tmp_path / "config.json").write_text("")
    with pytest.raises(SweepConfigMismatch, match="is damaged.*delete"):
        Checkpoint(tmp_path, CFG)


def test_shards_split_the_items_never_write_the_main_log_and_merge_into_it(tmp_path):
    main = Checkpoint(tmp_path, CFG)
    main.add("row0", 0)                                   # finished before the split
    before = (tmp_path / "items.jsonl").read_bytes()
    shards = [Checkpoint(tmp_path, CFG, shard=(k, 3)) for k in (1, 2, 3)]
    assert [[i for i in range(7) if s.owns(i)] for s in shards] == [[0, 3, 6], [1, 4], [2, 5]]
    assert main.owns(5)                                   # without a shard: every item
    for s in shards:
        assert "row0" in s                                # the main log's items count as done
        for i in range(1, 7):
            if s.owns(i):
                s.add(f"row{i}", i)
    assert (tmp_path / "items.jsonl").read_bytes() == before  # shards wrote only their own logs
    assert (tmp_path / "shards" / "2-of-3" / "items.jsonl").is_file()
    # read-only readers (figures from a log) see the shards at once
    assert read_sweep(tmp_path)[1] == {f"row{i}": i for i in range(7)}
    # a shard reopened resumes its own items; opening the main log merges every shard's, once
    assert "row4" in Checkpoint(tmp_path, CFG, shard=(2, 3))
    merged = Checkpoint(tmp_path, CFG)
    assert merged.n_merged == 6 and dict(merged.results()) == {f"row{i}": i for i in range(7)}
    assert Checkpoint(tmp_path, CFG).n_merged == 0 and len(Checkpoint(tmp_path, CFG)) == 7


def test_pending_skips_finished_items_retries_old_error_records_and_counts_the_resumed_bar(tmp_path, capsys):
    ck = Checkpoint(tmp_path, CFG)
    ck.add("row1", {"ie": 1})
    ck.add("row2", {"error": "old logs stored failures"})   # not finished: tried again
    items = list(range(6))
    key = "row{}".format
    assert ck.finished("row1") and not ck.finished("row2") and not ck.finished("row9")
    got = []
    for i in ck.pending(items, key, progress=True, desc="facts", unit="fact"):
        got.append(i)
        if i == 3:
            ck.add(key(i), {"ie": i})
    assert got == [0, 2, 3, 4, 5]
    bar = capsys.readouterr().err
    assert "facts:  17%|" in bar and "1/6" in bar and "6/6" in bar   # starts at the one already done
    # a shard yields its own items only, and counts only those
    shard = Checkpoint(tmp_path, CFG, shard=(2, 2))
    assert list(shard.pending(items, key)) == [5]                  # owns 1, 3, 5; 1 and 3 are done
    list(shard.pending(items, key, progress=True, desc="facts"))
    assert "facts (shard 2/2):  67%|" in capsys.readouterr().err


def test_shards_with_other_settings_or_bad_numbers_are_refused(tmp_path):
    Checkpoint(tmp_path, CFG).add(0, 1)
    with pytest.raises(SweepConfigMismatch, match=r"other settings \(window: 10 → 9\)"):
        Checkpoint(tmp_path, {**CFG, "window": 9}, shard=(1, 2))    # the main log holds another sweep
    odd = tmp_path / "shards" / "1-of-2"
    odd.mkdir(parents=True)
    (odd / "config.json").write_text(json.dumps({**CFG, "window": 9}))
    (odd / "items.jsonl").write_text('{"id": "a", "result": 1}\n')
    for open_ in (lambda: Checkpoint(tmp_path, CFG), lambda: read_sweep(tmp_path)):
        with pytest.raises(SweepConfigMismatch, match="shards/1-of-2 holds a shard made with other settings"):
            open_()
    assert parse_shard("2/3") == (2, 3) and parse_shard((1, 1)) == (1, 1) and parse_shard(None) is None
    for bad in ("0/2", "3/2", "1", "a/b", "1/2/3", "-1/2"):
        with pytest.raises(SettingError, match=f"shard '{bad}' is not K/N with 1 ≤ K ≤ N.*--shard 1/2"):
            parse_shard(bad)


def test_state_snapshots_last_record_wins(tmp_path):
    ck = Checkpoint(tmp_path, CFG)
    assert ck.load_state() is None
    ck.save_state({"s": torch.zeros(3)}, {"batches": 1})
    ck.save_state({"s": torch.ones(3)}, {"batches": 2})
    assert sorted(p.name for p in tmp_path.glob("state-*")) == ["state-000001.safetensors"]
    # a kill after writing the next snapshot file but before its record: the record still rules
    (tmp_path / "state-000002.safetensors").write_bytes(b"half")
    tensors, progress = Checkpoint(tmp_path, CFG).load_state()
    assert progress == {"batches": 2} and torch.equal(tensors["s"], torch.ones(3))
    assert not (tmp_path / "state-000002.safetensors").exists()
    (tmp_path / "state-000001.safetensors").write_bytes(b"x")
    with pytest.raises(SweepConfigMismatch, match="missing or damaged"):
        Checkpoint(tmp_path, CFG).load_state()


def test_sweep_errors_listed_and_printed(capsys):
    errs = SweepErrors("trace sweep")
    errs.add(7, "'Paris' in 'X is in'", ValueError("subject not\nfound"))
    assert len(errs) == 1 and errs.items[0] == {"row": 7, "fact": "'Paris' in 'X is in'",
                                                "error": "ValueError: subject not found"}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "row 7" in err and "the sweep goes on" in err
    assert "1 error(s) in trace sweep: row 7" in errs.summary()
