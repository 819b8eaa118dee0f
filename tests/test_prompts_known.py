"""The RAG prompt and the known-fact rules: each defined once, used by every method."""

from __future__ import annotations

import warnings

import pytest

from conftest import tiny
from interp.datasets import Fact
from interp.errors import InterventionError, PromptError, UnknownTargetWarning
from interp.known import KNOWN_RULES, check_known, check_target, unknown_target
from interp.prompts import RAG_TEMPLATE, rag_prompt

Q = "The Eiffel Tower is located in the city of"
CTX = "The Eiffel Tower stands in Paris, on the Champ de Mars."


def test_rag_prompt_text_and_spans():
    rp = rag_prompt(Q, "  " + CTX + " ")
    assert rp.text == RAG_TEMPLATE.format(context=CTX, question=Q)
    assert str(rp) == rp.text
    assert rp.text[rp.question_start:] == Q
    assert rp.text[slice(*rp.context_span)] == CTX
    # the subject also occurs in the context: the question is located by its last occurrence
    rp2 = rag_prompt("Paris", "Paris is in France.", template="{question}? {context} {question}")
    assert rp2.question_start == len(rp2.text) - len("Paris")
    for bad in ("", "   "):
        with pytest.raises(PromptError, match="context is empty"):
            rag_prompt(Q, bad)
    with pytest.raises(PromptError, match="question is empty"):
        rag_prompt(" ", CTX)
    with pytest.raises(PromptError, match=r"\{context\} and \{question\}"):
        rag_prompt(Q, CTX, template="{context} then {query}")


def test_every_method_builds_the_same_rag_prompt():
    """Causal tracing, patching and the knockout CLI put the context where rag_prompt does."""
    from types import SimpleNamespace

    from interp.attention.cli import _prompt_and_context
    from interp.mediation import activation_patching, causal_trace
    m = tiny("llama")
    text = rag_prompt(Q, CTX).text
    tr = causal_trace(m, Q, "Eiffel Tower", context=CTX, kinds=("resid",), samples=1, positions=[-1])
    assert "".join(tr.tokens) == text
    pt = activation_patching(m, Q, "The Kremlin Palace is located in the city of", context=CTX, layers=[0],
                             positions=[-1], answer=" Paris", wrong=" Moscow")
    assert pt.clean == text
    assert _prompt_and_context(SimpleNamespace(prompt=Q, context=CTX))[0] == text


def test_known_rules():
    m = tiny("llama")
    facts = [Fact(Q, "Eiffel Tower", "Paris"), Fact("Rome is the capital of", "Rome", "Italy")]
    top = [int(m.run(f.prompt).logits[0].argmax()) for f in facts]
    words = [m.tokenizer.decode([t]) for t in top]
    # a fact whose attribute *is* the model's top-1 word is known under both id- and string rules
    facts.append(Fact(Q, "Eiffel Tower", words[0].strip()))
    rome = check_known(m, facts, rule="rome")
    first = check_known(m, facts, rule="first_token")
    assert [c.top_id for c in rome] == top + [top[0]]
    assert rome[2].known and rome[2].target_id == top[0]
    assert first[2].known == (first[2].answer_id == top[0])
    for c in first:
        assert c.known == (c.top_id == c.answer_id) and c.target_id == c.top_id
    soft = check_known(m, facts, rule="min_p", min_p=0.0)
    assert all(c.known and c.target_id == c.answer_id for c in soft)
    assert set(KNOWN_RULES) == {"rome", "first_token", "min_p"}
    with pytest.raises(InterventionError, match="choose from rome, first_token, min_p"):
        check_known(m, facts, rule="geva")
    with pytest.raises(InterventionError, match="needs min_p"):
        check_known(m, facts, rule="min_p")


def test_unknown_target_warning_rule():
    assert unknown_target(0.5, True) is None
    assert "not the model's top-1" in unknown_target(0.5, False)
    assert "p_clean = 0.0070 < 0.05" in unknown_target(0.007, True)
    assert unknown_target(0.007, True, min_p_clean=0.001) is None
    assert unknown_target(0.007, True, min_p_clean=None) is None
    with pytest.warns(UnknownTargetWarning, match="' Hawaii' is not what the model predicts"):
        check_target(" Hawaii", 0.007, False, method="causal_trace")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_target(" Paris", 0.7, True) is None
