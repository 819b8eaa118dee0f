"""``interp trace`` / ``interp patch``: stable JSON files, dataset sweeps, errors (tiny model on disk)."""

from __future__ import annotations

import json

import pytest

from conftest import default_tokenizer, tiny_hf
from interp.cli import main

PROMPT = "The Eiffel Tower is in the city of"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_llama")
    tiny_hf("llama", n_layers=2).save_pretrained(d)
    default_tokenizer().save_pretrained(d)
    return str(d)


def test_trace_writes_stable_json(model_dir, tmp_path, capsys):
    out = tmp_path / "t"
    rc = main(["trace", "--model", model_dir, "--prompt", PROMPT, "--subject", "Eiffel Tower", "--kinds",
               "resid,mlp", "--window", "2", "--samples", "2", "--noise", "0.4", "--seed", "3", "--out", str(out),
               "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    d = json.loads((out / "trace.json").read_text())
    assert d["tokens"] == summary["tokens"] and d["subject_range"] == [1, 4]
    assert 0 <= d["p_corrupt"] <= 1 and 0 <= d["p_clean"] <= 1
    assert set(d["p_restored"]) == {"resid", "mlp"}
    assert len(d["p_restored"]["resid"]) == 2 and len(d["p_restored"]["resid"][0]) == len(d["tokens"])
    assert d["settings"]["noise_level"] == 0.4 and d["seed"] == 3 and d["settings"]["window"] == 2
    assert (out / "trace.html").exists()


def test_trace_with_context_and_dataset(model_dir, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["trace", "--model", model_dir, "--prompt", PROMPT, "--subject", "Eiffel Tower", "--kinds", "resid",
                 "--samples", "1", "--context", "The Eiffel Tower stands in Paris.", "--out", str(out), "--json"]) == 0
    d = json.loads((out / "trace.json").read_text())
    assert d["context_range"][1] <= d["subject_range"][0]
    capsys.readouterr()
    data = tmp_path / "facts.json"
    data.write_text(json.dumps([{"prompt": PROMPT, "subject": "Eiffel Tower", "attribute": "Paris"},
                                {"prompt": "Toyota is from", "attribute": "Japan"}]))
    sw = tmp_path / "sweep"
    assert main(["trace", "--model", model_dir, "--dataset", str(data), "--min-p", "0", "--kinds", "resid",
                 "--samples", "1", "--out", str(sw), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n_traced"] == 1 and s["skipped"][0][0] == 1
    assert (sw / "trace_sweep.json").exists() and (sw / "items.jsonl").exists()


def test_sharded_trace_sweep_equals_one_process(model_dir, tmp_path, capsys, monkeypatch):
    import importlib
    ct = importlib.import_module("interp.mediation.causal_trace")   # the module (the package exports the function)
    data = tmp_path / "facts.json"
    data.write_text(json.dumps([{"prompt": PROMPT, "subject": "Eiffel Tower", "attribute": "Paris"},
                                {"prompt": "Toyota cars are made in", "subject": "Toyota", "attribute": "Japan"},
                                {"prompt": "The Louvre is in the city of", "subject": "Louvre", "attribute": "Paris"}]))
    calls = []
    real = ct.causal_trace
    monkeypatch.setattr(ct, "causal_trace", lambda *a, **k: (calls.append(a[2]), real(*a, **k))[1])
    args = ["trace", "--model", model_dir, "--dataset", str(data), "--min-p", "0", "--kinds", "resid,mlp",
            "--window", "2", "--samples", "2", "--json"]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "trace_sweep.json").read_text())
    assert one["n_traced"] == 3 and len(calls) == 3
    sw, calls[:] = tmp_path / "sharded", []
    capsys.readouterr()
    for k in ("1/2", "2/2"):
        assert main(args + ["--out", str(sw), "--shard", k]) == 0
        s = json.loads(capsys.readouterr().out)
        assert s["shard"] == [int(k[0]), 2] and s["dir"].endswith(f"shards/{k[0]}-of-2")
    assert calls == ["Eiffel Tower", "Louvre", "Toyota"]          # facts 0 and 2, then fact 1: each once
    assert not (sw / "trace_sweep.json").exists()                # a shard draws nothing in the main directory
    assert main(args + ["--out", str(sw)]) == 0 and len(calls) == 3  # the merge run traces nothing again
    two = json.loads((sw / "trace_sweep.json").read_text())
    assert two["n_traced"] == 3 and two["aie"] == one["aie"] and two["se"] == one["se"]
    assert len((sw / "items.jsonl").read_text().splitlines()) == 3


def test_patch_with_atp(model_dir, tmp_path, capsys):
    out = tmp_path / "p"
    rc = main(["patch", "--model", model_dir, "--clean", PROMPT, "--corrupt", "The Berlin Wall Tower is in the city of",
               "--sites", "resid_pre,head", "--answer", " Paris", "--wrong", " Berlin", "--layers", "0-1",
               "--positions", "2,3,-1", "--atp", "--atp-star", "--out", str(out), "--json"])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    assert set(s["atp_spearman"]) == {"resid_pre", "head"} == set(s["atp_star_spearman"])
    star = json.loads((out / "atp_star" / "attribution.json").read_text())
    assert star["method"] == "atp*" and star["signed"] is False
    d = json.loads((out / "patching.json").read_text())
    assert len(d["values"]["resid_pre"]) == 2 and len(d["values"]["resid_pre"][0]) == 3
    assert (out / "attribution.json").exists()


def test_cli_errors_exit_2(model_dir, tmp_path, capsys):
    assert main(["trace", "--model", model_dir, "--prompt", PROMPT, "--subject", "Louvre", "--out", str(tmp_path)]) == 2
    assert "does not occur" in capsys.readouterr().err
    assert main(["trace", "--model", model_dir, "--prompt", PROMPT, "--subject", "Eiffel Tower", "--window", "0",
                 "--out", str(tmp_path)]) == 2
    assert main(["trace", "--model", model_dir, "--prompt", PROMPT, "--subject", "Eiffel Tower", "--samples", "0",
                 "--out", str(tmp_path)]) == 2
    assert main(["patch", "--model", model_dir, "--clean", PROMPT, "--corrupt", "Hi", "--out", str(tmp_path)]) == 2
    assert "same number of tokens" in capsys.readouterr().err


def test_rag_comparison_sweep_resumes(model_dir, tmp_path, capsys):
    """``interp rag``: known facts (here: p(true object) ≥ 0 on the tiny model), three conditions
    each, logged per fact; a rerun with more facts traces only the new one; other settings refused."""
    rows = [{"subject": "Eiffel Tower", "rel_p_id": "P131", "query": "The Eiffel Tower is located in the city of",
             "true_object": "Paris", "counterfactual_object": "Rome",
             "fact_paragraph": "The Eiffel Tower is a famous landmark. It is located in the city of Rome, Italy."},
            {"subject": "Colosseum", "rel_p_id": "P131", "query": "The Colosseum is located in the city of",
             "true_object": "Rome", "counterfactual_object": "Paris",
             "fact_paragraph": "The Colosseum is an amphitheatre. It stands in the city of Paris, France."}]
    # Fakepedia repeats a fact once per counterfactual object: traced once, with its first row
    rows.insert(1, {**rows[0], "counterfactual_object": "Berlin",
                    "fact_paragraph": "The Eiffel Tower is a famous landmark. It is located in Berlin."})
    data = tmp_path / "fake.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "rag"
    argv = ["rag", "--model", model_dir, "--dataset", str(data), "--min-p", "0", "--kinds", "resid",
            "--samples", "1", "--window", "2", "--out", str(out), "--json"]
    assert main(argv + ["--n-facts", "1"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["n_facts"] == 1 and first["n_known"] == 2
    assert len((out / "items.jsonl").read_text().splitlines()) == 1
    assert main(argv + ["--n-facts", "2"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["n_facts"] == 2 and len((out / "items.jsonl").read_text().splitlines()) == 2
    d = json.loads((out / "rag_comparison.json").read_text())
    assert set(d["aie"]) == {"no_context", "true_context", "counterfactual_context"}
    assert sum(d["answers"]["true_context"].values()) == 2
    assert [f[0] for f in d["facts"]] == ["Eiffel Tower", "Colosseum"] and d["facts"][0][3] == "Rome"
    assert d["settings"]["n_scanned"] == 2
    assert main(argv + ["--n-facts", "2", "--samples", "2"]) == 2      # other settings: refused


def test_rag_fill_from_fact_file_with_swapped_objects(model_dir, tmp_path, capsys):
    """Fewer known Fakepedia facts than ``--n-facts``: the rest come from a known_1000 file, each
    with another fact's object of the same relation as its counterfactual, logged in their own
    resumable sweep; a subject already traced is not traced again."""
    fake = tmp_path / "fake.jsonl"
    fake.write_text(json.dumps({
        "subject": "Eiffel Tower", "rel_p_id": "P131", "query": "The Eiffel Tower is located in the city of",
        "true_object": "Paris", "counterfactual_object": "Rome",
        "fact_paragraph": "The Eiffel Tower is a famous landmark. It is located in the city of Rome."}) + "\n")
    known = [{"known_id": 0, "subject": "Eiffel Tower", "attribute": "Paris", "relation_id": "P131",
              "prompt": "The Eiffel Tower is in"},
             {"known_id": 1, "subject": "Colosseum", "attribute": "Rome", "relation_id": "P131",
              "prompt": "The Colosseum is in"},
             {"known_id": 2, "subject": "Big Ben", "attribute": "London", "relation_id": "P131",
              "prompt": "Big Ben is in"},
             {"known_id": 3, "subject": "Toyota", "attribute": "Japan", "relation_id": "P17",
              "prompt": "Toyota comes from"}]        # the only P17 fact: no object to swap in
    k1000 = tmp_path / "known_1000.json"
    k1000.write_text(json.dumps(known))
    out = tmp_path / "rag"
    argv = ["rag", "--model", model_dir, "--dataset", str(fake), "--fill-from", str(k1000), "--min-p", "0",
            "--kinds", "resid", "--samples", "1", "--window", "2", "--out", str(out), "--json"]
    assert main(argv + ["--n-facts", "3"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n_facts"] == 3 and s["sources"] == {"fake.jsonl": 1, "known_1000.json": 2}
    d = json.loads((out / "rag_comparison.json").read_text())
    assert [f[0] for f in d["facts"]] == ["Eiffel Tower", "Colosseum", "Big Ben"]
    assert [f[4] for f in d["facts"]] == ["fake.jsonl", "known_1000.json", "known_1000.json"]
    assert d["facts"][1][3] in ("Paris", "London") and d["facts"][2][3] in ("Paris", "Rome")
    assert d["settings"]["n_known_by_source"] == {"fake.jsonl": 1, "known_1000.json": 2}
    assert set(d["by_source"]) == {"fake.jsonl", "known_1000.json"}
    assert len((out / "items.jsonl").read_text().splitlines()) == 1
    assert len((out / "known_1000" / "items.jsonl").read_text().splitlines()) == 2
    # resumed: the same result, nothing traced again (the logs keep their lines)
    assert main(argv + ["--n-facts", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"] == s["summary"]
    assert len((out / "known_1000" / "items.jsonl").read_text().splitlines()) == 2
    # no fill needed: the fill file is not read into the result
    assert main(argv + ["--n-facts", "1", "--out", str(tmp_path / "one")]) == 0
    assert json.loads(capsys.readouterr().out)["sources"] == {"fake.jsonl": 1}
    # a fill file that is not there: one line naming it, exit 2
    missing = [a if a != str(k1000) else str(tmp_path / "nope.json") for a in argv]
    assert main(missing + ["--n-facts", "5", "--out", str(tmp_path / "two")]) == 2
    assert "nope.json does not exist" in capsys.readouterr().err
