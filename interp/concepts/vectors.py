"""Concept vectors: value vectors that carry one concept (ConceptVectors, Hong et al. 2024).

A *concept vector* is one MLP value vector ``W_out(l)[i]`` (``mlp.down_proj.weight[:, i]`` of a
Llama) whose vocabulary projection ``v @ W_U`` — **no final norm**, as in the paper — has the
concept's words among its top tokens.  The paper screened candidates with GPT-4 and people; here
the screen is a scoring function over the top-k tokens that a user can replace:

* ``token_match(token, terms) -> float`` is applied once to every vocabulary entry (fast, the
  default: a token scores 1 when, stripped and case-folded, it equals a term, is a prefix of one at
  least 4 letters and 60% of it long (``" Ital"`` for "italy"), or the term plus ≤ 3 letters);
* a vector's score is ``Σ_r match(top_r) / log2(r + 2)`` (matches near the top count more);
* or ``score_fn(top_tokens, terms) -> float`` replaces the whole rule (called per vector).

The causal check follows the paper: perturb the vector (``N(0, σ²)`` noise added to every
coordinate, or zero it) and compare behaviour on questions about the concept vs unrelated
questions.  The edit is a temporary in-place change of the weight (:func:`edited_value_vectors`,
a context manager that always restores the original values, also on error), so it applies to a
forward, to ``generate`` and under every engine (they share the parameters).  Two measures:

* facts the model *knows* (ROME's known_1000 rows whose answer is one of the concept's terms,
  and a sample of other rows; kept only when the clean model's top-1 token is the answer):
  top-1 accuracy and answer probability before/after;
* the dataset's ``QA`` / ``unrelated_QA`` questions, prompt ``"Question: {q}\\n Answer:"``,
  greedy answers before/after compared with ROUGE-L (the paper also reports BLEU), since those
  questions have no gold answers.

ConceptVectors' ``Layer, Dim`` index LLaMA-2-7B / OLMo-7B; for another model the vectors must be
found again (:func:`find_concept_vectors`).
"""

from __future__ import annotations

import json
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..capabilities import REMOTE
from ..errors import DatasetError, InterpError
from ..known import check_known
from ..neurons.decode import NeuronMap, check_neuron, decode_directions, decode_neuron, decode_neurons, vocab_strings
from ..remote import ships_with_requests
from ..results import Result

ships_with_requests(__name__)  # its reductions run where the model runs (interp.remote)

STOPWORDS = {"the", "of", "and", "for", "in", "on", "a", "an", "to", "with", "by", "at", "from"}

Vector = tuple[int, int]


# ---------------------------------------------------------------------- scoring
def concept_terms(concept: str, extra: Sequence[str] | None = None) -> list[str]:
    """Lower-case words of the concept's name (stop words dropped) plus ``extra`` terms."""
    words = [w.strip("()[],.'\"").casefold() for w in concept.replace("-", " ").split()]
    terms = [w for w in words if len(w) >= 3 and w not in STOPWORDS]
    if extra:
        terms += [t.strip().casefold() for t in extra if t.strip()]
    return list(dict.fromkeys(terms))


def default_token_match(token: str, terms: Sequence[str]) -> float:
    """1.0 when the token (stripped, case-folded) is a term, a long prefix of one, or an inflection."""
    t = token.strip().casefold()
    if len(t) < 3:
        return 0.0
    for term in terms:
        if t == term:
            return 1.0
        # a word piece of the term ("ital" of "italy"), long enough not to be another word's stem
        if len(t) >= max(4, 0.6 * len(term)) and term.startswith(t):
            return 1.0
        # an inflection of the term ("italians" of "italian")
        if len(term) >= 4 and t.startswith(term) and len(t) <= len(term) + 3:
            return 1.0
    return 0.0


@dataclass
class ConceptCandidates(Result):
    """Value vectors ranked by how well their top-k tokens match a concept's terms."""

    stem = "concept_candidates"

    model: str
    concept: str
    terms: list[str]
    k: int
    layers: list[int]
    candidates: list[dict] = field(default_factory=list)
    message: str = ""

    @property
    def empty(self) -> bool:
        """True when no value vector matched the concept."""
        return not self.candidates

    def figure(self):
        """The top candidates' match scores, labelled with their matched tokens."""
        import plotly.graph_objects as go

        from ..figures import style
        c = self.candidates[:20]
        fig = go.Figure(go.Bar(x=[f"L{x['layer']}:{x['index']}" for x in c], y=[x["score"] for x in c],
                               text=[" ".join(x["matched"][:4]) for x in c], textposition="outside"))
        fig.update_xaxes(title="value vector (layer:index)")
        fig.update_yaxes(title="match score (rank-weighted)")
        return style(fig, title=f"Candidate concept vectors for {self.concept!r} (top-{self.k}, no final norm)")


def find_concept_vectors(model, concept: str, *, terms: Sequence[str] | None = None, k: int = 200,
                         nmap: NeuronMap | None = None, layers: Sequence[int] | None = None,
                         token_match: Callable[[str, Sequence[str]], float] | None = None,
                         score_fn: Callable[[list[str], list[str]], float] | None = None,
                         limit: int = 20, progress: bool = False) -> ConceptCandidates:
    """Rank value vectors whose top-k vocabulary projection matches the concept (Hong et al. 2024).

    Args:
        terms: words standing for the concept (default: the words of ``concept``).
        k: top tokens per vector (the paper: 200), decoded with no final norm.
        nmap: a precomputed ``NeuronMap`` with direction ``"out"``, ``final_norm="none"`` and
            at least ``k`` tokens (decoded here otherwise).
        token_match / score_fn: replace the scoring (see the module docstring).

    Returns:
        :class:`ConceptCandidates`; when nothing matches, ``candidates`` is empty and
        ``message`` says so (no exception: an absent concept is an answer).
    """
    terms = list(terms) if terms else concept_terms(concept)
    if not terms:
        raise InterpError(f"concept {concept!r} gives no search terms (all words are shorter than 3 letters "
                          f"or stop words); pass terms=[...]")
    a = model.adapter
    vocab = vocab_strings(model.tokenizer, a.vocab_size)
    match = (torch.tensor([(token_match or default_token_match)(s, terms) for s in vocab], dtype=torch.float32)
             if score_fn is None else None)
    found = []  # (score, layer, index, top ids, norm)
    if nmap is None and score_fn is None:
        # scored where the model runs, one request per layer: only each layer's best vectors travel
        lay = list(range(a.n_layers)) if layers is None else [a.check_layer(l) for l in layers]
        it = lay
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(lay, desc="score value vectors", unit="layer")
        for l in it:
            sc, idx, ids, norms = model.compute(best_value_vectors, l, match, k, max(limit, 0))
            found += [(float(x), l, int(n), t, float(v)) for x, n, t, v in zip(sc, idx, ids, norms)]
    else:
        if nmap is None:
            nmap = decode_neurons(model, layers=layers, directions=["out"], k=k, final_norm="none",
                                  bottom=False, progress=progress)
        elif "out" not in nmap.directions or nmap.final_norm != "none" or nmap.k < k:
            raise InterpError(f"the given map cannot be used: it needs direction 'out', final_norm 'none' "
                              f"and k ≥ {k} (has {nmap.directions}, {nmap.final_norm!r}, k={nmap.k})")
        elif layers is not None:
            missing = [l for l in (a.check_layer(x) for x in layers) if l not in nmap.layers]
            if missing:
                raise InterpError(f"layers {missing} are not in the given map")
        lay = nmap.layers if layers is None else [a.check_layer(l) for l in layers]
        d = nmap.directions.index("out")
        li = [nmap.layers.index(l) for l in lay]
        ids = nmap.top_ids[d, li, :, :k].long()  # L N k
        if score_fn is None:
            scores = (match[ids] * rank_weight(k)).sum(-1)  # L N
        else:
            scores = torch.tensor([[float(score_fn([vocab[t] for t in ids[i, n].tolist()], terms))
                                    for n in range(ids.shape[1])] for i in range(ids.shape[0])])
        flat = scores.flatten()
        best = [j for j in flat.argsort(descending=True, stable=True)[:max(limit, 0)].tolist() if flat[j] > 0]
        pairs = [(lay[j // ids.shape[1]], j % ids.shape[1]) for j in best]
        norms = [float(v.norm()) for v in model.compute(value_vectors, pairs)] if pairs else []
        found = [(float(flat[j]), l, n, ids[j // ids.shape[1], n], v) for j, (l, n), v in zip(best, pairs, norms)]
    found.sort(key=lambda f: (-f[0], lay.index(f[1]), f[2]))
    cands = []
    for s_, l, n, ids_, norm in found[:max(limit, 0)]:
        if s_ <= 0:
            break
        toks = [vocab[t] for t in ids_.tolist()]
        ranks = [] if match is None else match[ids_].nonzero().flatten().tolist()
        cands.append({"layer": l, "index": n, "score": round(s_, 4), "matched": [toks[r] for r in ranks],
                      "matched_ranks": ranks, "top_tokens": toks[:20], "norm": norm})
    msg = (f"{len(cands)} candidate value vectors for {concept!r}" if cands else
           f"no value vector's top-{k} tokens match the terms {terms} of concept {concept!r} "
           f"(layers {lay[0]}..{lay[-1]}); try other terms or a larger k")
    return ConceptCandidates(model.name, concept, terms, k, lay, cands, msg)


def concept_vector(model, layer: int, index: int, *, k: int = 20) -> dict:
    """Look up one value vector by ``(layer, index)`` as ConceptVectors gives them.

    Returns its norm and its top/bottom-k tokens (no final norm).
    """
    layer, index = check_neuron(model.adapter, layer, index)
    info = decode_neuron(model, layer, index, "out", k=k, final_norm="none")
    info["norm"] = float(model.compute(value_vectors, [(layer, index)])[0].norm())
    return info


# ---------------------------------------------------------------------- editing
@contextmanager
def edited_value_vectors(model, vectors: Sequence[Vector], *, mode: str = "noise", sigma: float = 0.1,
                         seed: int = 0, values: Sequence[Tensor] | None = None) -> Iterator[list[Tensor]]:
    """Temporarily replace value vectors in the weights; always restored on exit.

    ``mode``: ``"noise"`` adds ``N(0, sigma²)`` to every coordinate (ConceptVectors' check),
    ``"zero"`` sets the vector to 0 (its neuron then writes nothing), ``"set"`` uses ``values``.
    Yields the new vectors.
    """
    if mode not in ("noise", "zero", "set"):
        raise InterpError(f"mode must be 'noise', 'zero' or 'set', not {mode!r}")
    a = model.adapter
    vecs = [check_neuron(a, int(l), int(i)) for l, i in vectors]
    if not vecs:
        raise InterpError("no vectors to edit: give (layer, index) pairs")
    g = torch.Generator().manual_seed(seed)
    if model.supports(REMOTE):
        # a remote model's weights are shared: the edit travels with every request instead
        edits = [(l, i, "add", torch.randn(a.d_model, generator=g) * sigma) if mode == "noise" else
                 (l, i, "set", torch.zeros(a.d_model) if mode == "zero" else torch.as_tensor(values[j]).float())
                 for j, (l, i) in enumerate(vecs)]
        with model.engine.session.editing(edits):
            old = model.compute(value_vectors, vecs)
            yield [o + e[3] if e[2] == "add" else e[3] for o, e in zip(old, edits)]
        return
    saved, new = [], []
    try:
        with torch.no_grad():
            for j, (l, i) in enumerate(vecs):
                row = a.W_out(l)[i]
                saved.append((row, row.detach().clone()))
                if mode == "noise":
                    v = row + (torch.randn(row.shape, generator=g) * sigma).to(row.device, row.dtype)
                elif mode == "zero":
                    v = torch.zeros_like(row)
                else:
                    v = torch.as_tensor(values[j]).to(row.device, row.dtype)
                row.copy_(v)
                new.append(v.detach().clone())
        yield new
    finally:
        with torch.no_grad():
            for row, old in saved:
                row.copy_(old)


# ---------------------------------------------------------------------- data
def load_concepts(path: str | Path) -> list[dict]:
    """ConceptVectors JSON (``Concept, Layer, Dim, QA, wikipedia_content, unrelated_QA …``)."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"concept file {p} does not exist")
    data = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(data, list) or not data or not all(isinstance(x, dict) and "Concept" in x for x in data):
        raise DatasetError(f"{p} is not a ConceptVectors file (a JSON list of records with 'Concept')")
    return data


def find_concept_record(records: list[dict], concept: str) -> dict | None:
    """The ConceptVectors record whose ``Concept`` is ``concept`` (case-insensitive), or None."""
    c = concept.casefold()
    return next((r for r in records if r["Concept"].casefold() == c), None)


def fact_scores(model, facts) -> tuple[Bool[Tensor, "fact"], Float[Tensor, "fact"], list[int]]:
    """Whether the model knows each fact (:mod:`interp.known`'s ``"first_token"`` rule: top-1 = the
    answer's first token), the answer's probability and its token id; one batched run."""
    if not facts:
        return torch.zeros(0, dtype=torch.bool), torch.zeros(0), []
    checks = check_known(model, facts, rule="first_token", batch_size=len(facts))
    return (torch.tensor([c.known for c in checks]), torch.tensor([c.p_answer for c in checks]),
            [c.answer_id for c in checks])


def facts_for_concept(model, facts, terms: Sequence[str], *, n_unrelated: int = 40, seed: int = 0,
                      max_related: int = 40) -> tuple[list, list]:
    """Known facts about the concept (answer matches a term) and unrelated ones, both kept only
    when the clean model answers them (top-1 = answer's first token)."""
    terms = [t.casefold() for t in terms]

    def related(f):
        return any(default_token_match(w, terms) for w in f.attribute.split())
    rel = [f for f in facts if related(f)][:max_related * 3]
    rng = random.Random(seed)
    others = [f for f in facts if not related(f) and not any(t in f.prompt.casefold() for t in terms)]
    rng.shuffle(others)
    others = others[:n_unrelated * 4]
    keep = []
    for group, cap in ((rel, max_related), (others, n_unrelated)):
        ok, _, _ = fact_scores(model, group) if group else (torch.zeros(0, dtype=torch.bool), None, None)
        keep.append([f for f, o in zip(group, ok.tolist()) if o][:cap])
    return keep[0], keep[1]


def greedy_answers(model, questions: Sequence[str], *, max_new_tokens: int = 20,
                   template: str = "Question: {q}\n Answer:") -> list[str]:
    """Greedy answers (``Model.generate``: value-vector edits apply, engine-independent)."""
    if not questions:
        return []
    out = model.generate([template.format(q=q.strip()) for q in questions], max_new_tokens=max_new_tokens)
    return [model.tokenizer.decode(o, skip_special_tokens=True).strip() for o in out]


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 between two strings (whitespace tokens, longest common subsequence)."""
    x, y = a.split(), b.split()
    if not x and not y:
        return 1.0
    if not x or not y:
        return 0.0
    prev = [0] * (len(y) + 1)
    for xi in x:
        cur = [0]
        for j, yj in enumerate(y):
            cur.append(prev[j] + 1 if xi == yj else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(x), lcs / len(y)
    return 2 * p * r / (p + r)


# ---------------------------------------------------------------------- causal check
@dataclass
class CausalCheckResult(Result):
    """Behaviour on concept-related vs unrelated questions, before vs after editing the vector(s)."""

    stem = "concept_causal_check"

    model: str
    concept: str
    vectors: list[list[int]]
    mode: str
    sigma: float
    #: group ("related" / "unrelated") -> {"n", "acc_before", "acc_after", "p_before", "p_after"}
    facts: dict
    #: group -> {"n", "rouge_l"} (mean ROUGE-L of answers after vs before), or {} when not run
    qa: dict
    examples: list[dict] = field(default_factory=list)
    vector_norms: list[float] = field(default_factory=list)

    def figure(self):
        """Answer probability before / after the edit (left) and ROUGE-L of the QA answers (right), related vs unrelated."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from ..figures import style
        groups = ["related", "unrelated"]
        fig = make_subplots(rows=1, cols=2, subplot_titles=("known facts: answer probability",
                                                            "QA answers: ROUGE-L after vs before"))
        for when, col in (("before", "#8C8C8C"), ("after", "#C44E52")):
            fig.add_trace(go.Bar(x=groups, y=[self.facts.get(g, {}).get(f"p_{when}", 0) for g in groups],
                                 name=f"p(answer) {when}", marker_color=col), 1, 1)
        if self.qa:
            fig.add_trace(go.Bar(x=groups, y=[self.qa.get(g, {}).get("rouge_l", 0) for g in groups],
                                 name="ROUGE-L", marker_color="#4C72B0"), 1, 2)
        fig.update_yaxes(range=[0, 1.02])
        vv = ", ".join(f"L{l}:{i}" for l, i in self.vectors)
        what = f"N(0, {self.sigma}²) noise" if self.mode == "noise" else self.mode
        return style(fig, title=f"Concept vector {vv} ({self.concept}): {what}", width=1000)


def causal_check(model, vectors: Sequence[Vector], *, concept: str = "", related_facts=(), unrelated_facts=(),
                 related_questions: Sequence[str] = (), unrelated_questions: Sequence[str] = (),
                 mode: str = "noise", sigma: float = 0.1, seed: int = 0,
                 max_new_tokens: int = 20) -> CausalCheckResult:
    """ConceptVectors' causal validation (Hong et al. 2024): perturb the vector(s), compare related vs
    unrelated.

    Facts (``interp.datasets.Fact``) give top-1 accuracy and answer probability before/after;
    questions give greedy answers whose ROUGE-L after-vs-before is averaged per group (1.0 =
    unchanged).  The weights are restored afterwards.
    """
    vecs = [list(check_neuron(model.adapter, int(l), int(i))) for l, i in vectors]
    related_facts, unrelated_facts = list(related_facts), list(unrelated_facts)
    groups = {"related": related_facts, "unrelated": unrelated_facts}
    qgroups = {"related": list(related_questions), "unrelated": list(unrelated_questions)}
    before = {g: fact_scores(model, fs) for g, fs in groups.items()}
    ans_before = {g: greedy_answers(model, qs, max_new_tokens=max_new_tokens) for g, qs in qgroups.items()}
    with edited_value_vectors(model, vecs, mode=mode, sigma=sigma, seed=seed):
        after = {g: fact_scores(model, fs) for g, fs in groups.items()}
        ans_after = {g: greedy_answers(model, qs, max_new_tokens=max_new_tokens) for g, qs in qgroups.items()}
    facts = {}
    for g, fs in groups.items():
        if not fs:
            continue
        (ok0, p0, _), (ok1, p1, _) = before[g], after[g]
        facts[g] = {"n": len(fs), "acc_before": float(ok0.float().mean()), "acc_after": float(ok1.float().mean()),
                    "p_before": float(p0.mean()), "p_after": float(p1.mean())}
    qa, examples = {}, []
    for g, qs in qgroups.items():
        if not qs:
            continue
        r = [rouge_l(b, a) for b, a in zip(ans_before[g], ans_after[g])]
        qa[g] = {"n": len(qs), "rouge_l": sum(r) / len(r)}
        examples += [{"group": g, "question": q.strip(), "before": b, "after": a}
                     for q, b, a in list(zip(qs, ans_before[g], ans_after[g]))[:3]]
    norms = [float(v.norm()) for v in model.compute(value_vectors, vecs)]
    return CausalCheckResult(model.name, concept, vecs, mode, sigma, facts, qa, examples, norms)


def best_value_vectors(w, layer: int, match: Tensor, k: int, limit: int) -> tuple:
    """The ``limit`` value vectors of ``layer`` whose top-``k`` tokens (``W_out[i] @ W_U``, no final
    norm) score highest under ``match`` (a weight per vocabulary token), rank-weighted as
    :func:`rank_weight`: ``(scores, indices, top ids [limit, k], norms)``.  Runs where the model
    runs (``Model.compute``)."""
    D = w.W_out(layer)
    _, ids, _, _ = decode_directions(D.contiguous(), w.W_U, k, bottom=False)
    ids = ids.long()
    scores = (match.to(ids.device)[ids] * rank_weight(k).to(ids.device)).sum(-1)
    n = scores.sort(descending=True, stable=True).indices[:limit]
    return scores[n], n, ids[n], D[n].float().norm(dim=-1)


def value_vectors(w, vecs: Sequence[Vector]) -> list[Tensor]:
    """The value vectors ``W_out(layer)[index]`` (float32), read where the model runs."""
    return [w.W_out(l)[i].float() for l, i in vecs]


def rank_weight(k: int) -> Float[Tensor, "k"]:
    """The rank weights ``1 / log2(r + 2)`` of a top-``k`` list (matches near the top count more)."""
    return 1.0 / torch.log2(torch.arange(k, dtype=torch.float32) + 2)

