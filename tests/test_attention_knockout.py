"""Attention knockout: invariants, a hand-written reference forward, engine parity, bad input."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from conftest import default_tokenizer, tiny, tiny_hf
from interp.attention import (KnockoutResult, attention_knockout, default_window, ensure_eager,
                              knockout_logits, knockout_sweep)
from interp.datasets import Fact
from interp.attention.knockout import knockout_sweep_from_log
from interp.errors import EngineError, InterpError, InterventionError, LayerIndexError, SpanNotFoundError
from interp.model import Model
from interp.windows import window_layers

PROMPT = "The Eiffel Tower is located in the city of"
SUBJ = "The Eiffel Tower"


# ----------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_empty_source_set_changes_nothing(arch):
    m = tiny(arch)
    clean = m.run(PROMPT).logits.float()
    # row 0: no edit; row 1: an empty source set in every layer; row 2: a real knockout
    lg = knockout_logits(m, PROMPT, [[], [], [0, 1]], [[], [0, 1, 2], [1]])
    assert torch.equal(lg[1], lg[0])              # same forward: bitwise equal
    assert torch.allclose(lg[0], clean[0], atol=1e-6)  # other batch size: equal up to BLAS order
    assert not torch.allclose(lg[2], lg[0], atol=1e-6)
    r = attention_knockout(m, PROMPT, [], window=3)
    assert r.sources == {"empty": []}
    assert all(p == r.p_clean for p in r.p_knockout["empty"])
    assert all(v == 0.0 for v in r.relative_change["empty"])


def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


def manual_llama_logits(hf, ids: torch.Tensor, target: int, blocked: list[int], layers: set[int]):
    """Llama forward written out by hand (RMSNorm, rotary, GQA, SwiGLU) for one unpadded prompt.

    In the layers ``layers`` the score of ``target → s`` for ``s ∈ blocked`` is masked before
    the softmax.  Returns the logits at ``target``.
    """
    cfg = hf.config
    n = ids.shape[0]
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    d = cfg.hidden_size // H
    theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    inv = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
    ang = torch.arange(n).float()[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    x = hf.model.embed_tokens.weight[ids]
    mask = torch.full((n, n), float("-inf")).triu(1)
    for li, blk in enumerate(hf.model.layers):
        at = blk.self_attn
        h = _rms(x, blk.input_layernorm.weight, cfg.rms_norm_eps)
        q = (h @ at.q_proj.weight.T).view(n, H, d).transpose(0, 1)
        k = (h @ at.k_proj.weight.T).view(n, KV, d).transpose(0, 1)
        v = (h @ at.v_proj.weight.T).view(n, KV, d).transpose(0, 1)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k, v = k.repeat_interleave(H // KV, 0), v.repeat_interleave(H // KV, 0)
        s = q @ k.transpose(1, 2) / math.sqrt(d) + mask
        if li in layers:
            s[:, target, blocked] = float("-inf")
        o = (s.softmax(-1) @ v).transpose(0, 1).reshape(n, H * d)
        x = x + o @ at.o_proj.weight.T
        h2 = _rms(x, blk.post_attention_layernorm.weight, cfg.rms_norm_eps)
        mlp = blk.mlp
        x = x + (torch.nn.functional.silu(h2 @ mlp.gate_proj.weight.T) * (h2 @ mlp.up_proj.weight.T)) \
            @ mlp.down_proj.weight.T
    x = _rms(x, hf.model.norm.weight, cfg.rms_norm_eps)
    return (x @ hf.lm_head.weight.T)[target]


def test_block_all_but_self_matches_hand_written_reference():
    hf = tiny_hf("llama", seed=1)
    m = Model(hf, default_tokenizer(), "hf", name="tiny-llama")
    ids = torch.tensor(m.tokenize(PROMPT).token_ids(0))
    n = len(ids)
    # the hand-written forward reproduces the model itself
    assert torch.allclose(manual_llama_logits(hf, ids, n - 1, [], set()), m.run(PROMPT).logits[0], atol=1e-4)
    for t in (n - 1, 4):
        ref = manual_llama_logits(hf, ids, t, list(range(t)), {0, 1, 2})
        lg = knockout_logits(m, PROMPT, [list(range(t))], [[0, 1, 2]], target=t)[0]
        assert torch.allclose(lg, ref, atol=1e-4), (t, (lg - ref).abs().max())
        # and the result object: one window of all 3 layers, source = every edge but t → t
        r = attention_knockout(m, PROMPT, {"all_but_self": list(range(t))}, target=t, window=3, layers=[1])
        assert r.p_knockout["all_but_self"][0] == pytest.approx(float(ref.softmax(-1)[r.answer_id]), abs=1e-5)
    # one layer only
    ref = manual_llama_logits(hf, ids, n - 1, [0, 2, 3], {1})
    lg = knockout_logits(m, PROMPT, [[0, 2, 3]], [[1]])[0]
    assert torch.allclose(lg, ref, atol=1e-4)


def test_per_head_block_on_gqa_matches_reference_shape():
    """Blocking every head one by one equals blocking all heads at once (GQA tiny llama)."""
    m = tiny("llama")
    a = attention_knockout(m, PROMPT, ["subject"], subject=SUBJ, window=1)
    b = attention_knockout(m, PROMPT, ["subject"], subject=SUBJ, window=1, heads=range(m.adapter.n_heads))
    assert a.relative_change["subject"] == pytest.approx(b.relative_change["subject"], abs=1e-6)
    c = attention_knockout(m, PROMPT, ["subject"], subject=SUBJ, window=1, heads=[0])
    assert c.p_knockout["subject"] != a.p_knockout["subject"]


# ----------------------------------------------------------------------------- engines
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_engines_agree(arch):
    res = {}
    for eng in ("hf", "transformer_lens", "nnsight"):
        m = tiny(arch, eng)
        full = attention_knockout(m, PROMPT, ["subject", "non_subject", "last"], subject=SUBJ, window=1)
        head = attention_knockout(m, PROMPT, ["non_subject"], subject=SUBJ, window=3, heads=[1, 3])
        res[eng] = (full, head)
    for eng in ("transformer_lens", "nnsight"):
        for r_hf, r_e in zip(res["hf"], res[eng]):
            assert r_e.answer_id == r_hf.answer_id
            for s in r_hf.p_knockout:
                assert r_e.p_knockout[s] == pytest.approx(r_hf.p_knockout[s], abs=1e-4), (eng, s)
                assert r_e.relative_change[s] == pytest.approx(r_hf.relative_change[s], abs=1e-4), (eng, s)


# ----------------------------------------------------------------------------- eager attention
def test_sdpa_model_is_switched_or_refused():
    eager = tiny("llama")
    ref = attention_knockout(eager, PROMPT, ["subject"], subject=SUBJ, window=1)
    hf = tiny_hf("llama")
    hf.set_attn_implementation("sdpa")
    m = Model(hf, default_tokenizer(), "hf", name="tiny-llama")
    with pytest.raises(EngineError, match="sdpa"):
        ensure_eager(m, switch=False)
    with pytest.warns(UserWarning, match="switched the model from 'sdpa' to eager"):
        r = attention_knockout(m, PROMPT, ["subject"], subject=SUBJ, window=1)
    assert hf.config._attn_implementation == "eager"
    assert r.p_knockout["subject"] == pytest.approx(ref.p_knockout["subject"], abs=1e-6)


# ----------------------------------------------------------------------------- windows and sets
def test_default_window_and_clipping():
    assert default_window(48) == 9  # Geva et al.: GPT-2 XL
    assert default_window(30) == 7
    assert default_window(3) == 1 and default_window(1) == 1
    assert all(default_window(n) % 2 == 1 for n in range(1, 100))
    assert window_layers(0, 7, 30) == [0, 1, 2, 3]
    assert window_layers(15, 7, 30) == list(range(12, 19))
    assert window_layers(29, 7, 30) == [26, 27, 28, 29]


def test_named_sets_and_result_roundtrip(tmp_path):
    m = tiny("llama")
    r = attention_knockout(m, PROMPT, ["subject", "non_subject", "last"], subject=SUBJ)
    n = len(r.tokens)
    assert r.subject_range == [0, 4] or r.subject_range[0] == 0
    s0, s1 = r.subject_range
    assert r.sources["subject"] == list(range(s0, s1))
    assert r.sources["non_subject"] == [p for p in range(n - 1) if not s0 <= p < s1]
    assert r.sources["last"] == [n - 1]
    assert r.window == 1 and r.layers == [0, 1, 2] and r.windows == [[0], [1], [2]]
    for s in r.p_knockout:
        assert r.relative_change[s] == pytest.approx([(p - r.p_clean) / r.p_clean for p in r.p_knockout[s]])
    r.save(tmp_path)
    back = KnockoutResult.load(tmp_path)
    assert back.p_knockout == r.p_knockout and back.tokens == r.tokens
    fig = back.figure()
    assert len(fig.data) == 3


# ----------------------------------------------------------------------------- bad input
def test_bad_input():
    m = tiny("llama")
    with pytest.raises(SpanNotFoundError, match="not found in the prompt"):
        attention_knockout(m, PROMPT, ["subject"], subject="Big Ben")
    with pytest.raises(SpanNotFoundError, match="empty"):
        attention_knockout(m, PROMPT, ["subject"], subject="  ")
    with pytest.raises(SpanNotFoundError, match="needs subject="):
        attention_knockout(m, PROMPT, ["subject"])
    with pytest.raises(LayerIndexError, match="target position 40 out of range"):
        attention_knockout(m, PROMPT, ["last"], target=40)
    with pytest.raises(LayerIndexError, match="larger than the model"):
        attention_knockout(m, PROMPT, ["last"], window=4)
    with pytest.raises(LayerIndexError, match="at least 1"):
        attention_knockout(m, PROMPT, ["last"], window=0)
    n = m.tokenize(PROMPT).lengths[0]
    with pytest.raises(InterventionError, match="covers every position the target"):
        attention_knockout(m, PROMPT, {"everything": list(range(n))})
    with pytest.raises(InterventionError, match="covers every position the target"):
        attention_knockout(m, PROMPT, ["last"], target=0)  # the first token sees only itself
    with pytest.raises(InterventionError, match="comes after the target"):
        attention_knockout(m, PROMPT, {"late": [5]}, target=3)
    with pytest.raises(InterventionError, match="unknown source set"):
        attention_knockout(m, PROMPT, ["objects"])


# ----------------------------------------------------------------------------- dataset sweep
def test_sweep_resumes(tmp_path):
    m = tiny("llama")
    facts = [Fact("The Eiffel Tower is located in the city of", "The Eiffel Tower", "Paris", 0),
             Fact("Danish pastry was created in the country of", "Danish pastry", "Denmark", 1),
             Fact("The capital of Roman Republic is", "Roman Republic", "Rome", 2)]
    a = knockout_sweep(m, facts, tmp_path / "a", n_facts=2, require_known=False, progress=False)
    assert a.n_known == 2 and a.fact_rows == [0, 1]
    b = knockout_sweep(m, facts, tmp_path / "a", n_facts=3, require_known=False, progress=False)
    full = knockout_sweep(m, facts, tmp_path / "b", n_facts=3, require_known=False, progress=False)
    assert b.n_known == 3 and b.fact_rows == full.fact_rows
    for s in full.mean:
        assert b.mean[s] == pytest.approx(full.mean[s], abs=1e-9)
        assert b.sem[s] == pytest.approx(full.sem[s], abs=1e-9)
    with open(tmp_path / "a" / "items.jsonl") as f:
        assert len(f.readlines()) == 3
    # per-cell statistics over the 3 facts (exact sign-flip test: 8 flips), CI around the mean
    assert b.stats["settings"]["n_items"] == 3 and b.stats["settings"]["exact"]
    for s in b.sources:
        st = b.stats[s]
        assert len(st["p_adj"]) == m.n_layers and all(0.25 <= p <= pa <= 1 for p, pa in zip(st["p"], st["p_adj"]))
        assert all(lo - 1e-9 <= v <= hi + 1e-9 for lo, v, hi in zip(st["ci_low"], b.mean[s], st["ci_high"]))
    assert all(y is None for tr in b.figure(mask_nonsignificant=True).data for y in tr.y)
    # the same result from the log alone (no model, nothing written), also through the CLI
    log = tmp_path / "a"
    before = {p.name: p.read_bytes() for p in log.iterdir()}
    d = knockout_sweep_from_log(log)
    assert (d.n_known, d.n_scanned, d.fact_rows, d.window, d.sources) == (b.n_known, b.n_scanned, b.fact_rows,
                                                                          b.window, b.sources)
    assert d.mean == b.mean and d.stats == b.stats
    assert {p.name: p.read_bytes() for p in log.iterdir()} == before
    from interp.cli import main
    assert main(["knockout", "--from-log", str(log), "--out", str(tmp_path / "drawn"), "--json",
                 "--mask-nonsignificant"]) == 0
    assert json.loads((tmp_path / "drawn" / "knockout_sweep.json").read_text())["stats"] == json.loads(
        json.dumps(b.stats))
    with pytest.raises(InterpError, match="not a sweep directory"):
        knockout_sweep_from_log(tmp_path)
    # the tiny random model knows none of them: nothing is swept, every row is recorded
    c = knockout_sweep(m, facts, tmp_path / "c", n_facts=3, progress=False)
    assert c.n_known == 0 and c.n_scanned == 3


def test_sweep_errors_are_listed_not_unknown(tmp_path, capsys):
    m = tiny("llama")
    facts = [Fact("The Eiffel Tower is located in the city of", "The Eiffel Tower", "Paris", 0),
             Fact("The capital of Roman Republic is", "Atlantis", "Rome", 1),  # subject not in prompt
             Fact("Paris " * 200 + "Danish pastry was created in", "Danish pastry", "Denmark", 2),  # too long
             Fact("Danish pastry was created in the country of", "Danish pastry", "Denmark", 3)]
    r = knockout_sweep(m, facts, tmp_path / "a", n_facts=None, require_known=False, progress=False)
    assert r.fact_rows == [0, 3] and r.n_known == 2
    assert [(e["row"], e["error"].split(":")[0]) for e in r.errors] == [(1, "SpanNotFoundError"),
                                                                      (2, "PromptError")]
    assert "Atlantis" in r.errors[0]["fact"]
    err = capsys.readouterr().err
    assert "knockout sweep: row 1" in err and "knockout sweep: row 2" in err
    lines = (tmp_path / "a" / "items.jsonl").read_text().splitlines()
    assert len(lines) == 2  # failures are not stored as facts (neither known nor unknown)
    again = knockout_sweep(m, facts, tmp_path / "a", n_facts=None, require_known=False, progress=False)
    assert again.errors == r.errors and again.mean == r.mean  # a resumed run lists the same failures
    r.save(tmp_path / "res")
    assert type(r).load(tmp_path / "res").errors == r.errors


# ----------------------------------------------------------------------------- real model
@pytest.mark.slow
def test_default_model_geva_ordering(default_model):
    r = attention_knockout(default_model, PROMPT, ["subject", "last"], subject=SUBJ,
                           layers=[5, 22])
    assert r.answer.strip() == "Paris"
    early, late = 0, 1
    # subject → last matters in the upper-middle layers, far less early; last → last barely
    assert r.relative_change["subject"][late] < -0.5
    assert r.relative_change["subject"][late] < r.relative_change["subject"][early] - 0.3
    assert max(abs(v) for v in r.relative_change["last"]) < 0.2


# ----------------------------------------------------------------------------- position 0 and --bos
def test_position_zero_is_flagged_and_bos_moves_the_sink():
    from interp.errors import PositionZeroWarning
    m = tiny("llama")
    with pytest.warns(PositionZeroWarning, match=r"'subject' hold position 0 \('The'\)"):
        r = attention_knockout(m, PROMPT, ["subject", "non_subject", "last"], subject=SUBJ, window=1)
    assert r.position_zero == ["subject"] and r.bos == ""
    # a subject that does not start the prompt: the other set now holds position 0
    with pytest.warns(PositionZeroWarning, match="'non_subject'"):
        r2 = attention_knockout(m, PROMPT, ["subject", "non_subject"], subject="Eiffel Tower", window=1)
    assert r2.position_zero == ["non_subject"] and 0 in r2.sources["non_subject"]
    tok = m.tokenizer
    for bos, first in ((True, tok.bos_token), ("<|endoftext|>", "<|endoftext|>")):
        with warnings.catch_warnings():
            warnings.simplefilter("error", PositionZeroWarning)
            b = attention_knockout(m, PROMPT, ["subject", "non_subject", "last"], subject=SUBJ, window=1, bos=bos)
        assert b.bos == first and b.tokens[0] == first and b.tokens[1:] == r.tokens
        assert b.position_zero == [] and b.prompt == first + PROMPT
        # the named sets are the same tokens, one position later; the prefix is in none of them
        assert {k: [p - 1 for p in v] for k, v in b.sources.items()} == r.sources
        # the same knockout by explicit positions on the prefixed text gives the same numbers
        e = attention_knockout(m, first + PROMPT, dict(b.sources), window=1)
        assert e.answer_id == b.answer_id and e.position_zero == []
        for k in b.p_knockout:
            assert e.p_knockout[k] == pytest.approx(b.p_knockout[k], rel=1e-5), k
    from interp.errors import PromptError
    from interp.prompts import bos_prefix
    with pytest.raises(PromptError, match="no BOS token"):
        bos_prefix(type("T", (), {"bos_token": None})(), True)
    with pytest.raises(PromptError, match="bos must be"):
        bos_prefix(tok, 3)


def test_unknown_answer_warns_with_a_settable_threshold():
    from interp.errors import UnknownTargetWarning
    m = tiny("llama")
    top = attention_knockout(m, PROMPT, ["last"], window=1, min_p_clean=None)
    assert top.unknown_target is None and top.rank_clean == 0
    other = " Hawaii" if top.answer != " Hawaii" else " Rome"
    with pytest.warns(UnknownTargetWarning, match=f"{other!r} is not what the model predicts"):
        r = attention_knockout(m, PROMPT, ["last"], window=1, answer=other)
    assert "not the model's top-1" in r.unknown_target
    with pytest.warns(UnknownTargetWarning, match="p_clean = "):
        r = attention_knockout(m, PROMPT, ["last"], window=1, min_p_clean=1.0)
    assert r.unknown_target.startswith("p_clean")


def test_sweep_counts_position_zero_and_unknown_targets(tmp_path):
    from interp.errors import PositionZeroWarning, UnknownTargetWarning
    m = tiny("llama")
    facts = [Fact(PROMPT, SUBJ, "Paris", row=0), Fact("Rome is the capital of", "Rome", "Italy", row=1),
             Fact("The capital of Japan is", "Japan", "Tokyo", row=2)]
    with pytest.warns(PositionZeroWarning, match="in 3 of 3 facts"):
        with pytest.warns(UnknownTargetWarning, match="3 of 3 facts"):
            sw = knockout_sweep(m, facts, tmp_path / "a", n_facts=None, require_known=False, window=1,
                                min_p_clean=1.0, progress=False)
    # rows 0 and 1 start with the subject; row 2 blocks position 0 with non_subject — so 3 facts hold it
    assert sw.n_known == 3 and sw.n_position_zero == 3 and sw.n_unknown_target == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", PositionZeroWarning)
        sb = knockout_sweep(m, facts, tmp_path / "b", n_facts=None, require_known=False, window=1, bos=True,
                            min_p_clean=None, progress=False)
    assert sb.n_position_zero == 0 and sb.n_unknown_target == 0 and sb.bos == m.tokenizer.bos_token


def test_strongest_drops_are_fractions_printed_as_percentages():
    """The relative change is a fraction of p_clean: the summary (and the CLI, the report, notebook 04)
    print ``100 * x`` with a ``%`` sign (issue 17: "-0.4%" was a −0.43 fraction)."""
    m = tiny("llama")
    r = attention_knockout(m, PROMPT, subject=SUBJ, window=3, min_p_clean=None)
    drops = r.strongest_drops()
    assert set(drops) == set(r.relative_change)
    for s, (layer, rel) in drops.items():
        assert rel == min(r.relative_change[s]) and r.relative_change[s][r.layers.index(layer)] == rel
        p = r.p_knockout[s][r.layers.index(layer)]
        assert rel == pytest.approx(p / r.p_clean - 1, rel=1e-4, abs=1e-6)
        assert f"{s} {100 * rel:+.1f}%" in r.summary_line()


def test_rag_flow_counts_position_zero_and_the_prefix_moves_the_sink():
    """The RAG comparison (figure attention_rag_flow) runs after a sink prefix; without one it counts
    the examples whose blocked sets hold position 0 — the no-context subject starts the prompt."""
    from interp.attention.rag import RagExample, rag_flow
    m = tiny("llama")
    ex = [RagExample("Eiffel Tower is located in the city of", "Eiffel Tower", " Paris",
                     "It was built for a fair. The tower stands in Paris, on the Champ de Mars. It is tall.")]
    plain = rag_flow(m, ex, window=1)
    assert plain.bos == "" and plain.position_zero["plain"] == 1
    sunk = rag_flow(m, ex, window=1, bos="<|endoftext|>")
    assert sunk.bos == "<|endoftext|>" and sum(sunk.position_zero.values()) == 0
    assert set(sunk.plain["rel"]) == set(plain.plain["rel"]) == {"subject", "non_subject", "last"}
