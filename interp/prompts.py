"""Prompt text built the same way by every method: the RAG prompt, and a prefix for the attention sink.

"From RAGs to rich parameters" (Wadhwa et al. 2024) and Ghosh et al. 2024 ask the model::

    Information is below: {context} Given the context information and not prior knowledge,
    complete the following: {question}

Every method that runs "with a context" (causal tracing, activation patching, attention
knockouts and contributions, the RAG comparisons) builds its prompt here, so the template, its
placeholders (``{context}``, ``{question}``) and where the question and the context sit in the
text are defined once.  Both parts are stripped of surrounding white space before they are
placed; :class:`RagPrompt` carries the character positions a method needs to find the
question's subject (the question comes *after* the context, which may name the subject too).

:func:`bos_prefix` is the one definition of ``bos=`` / ``--bos`` (prepend the tokenizer's BOS or a
chosen token, so that position 0 — the attention sink — is not part of the prompt), and
:func:`sink_is_content` says when position 0 is a content token.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import PromptError

RAG_TEMPLATE = ("Information is below: {context} Given the context information and not prior "
                "knowledge, complete the following: {question}")


@dataclass(frozen=True)
class RagPrompt:
    """A RAG prompt's text and where its parts are (character offsets into ``text``)."""

    text: str
    question: str
    context: str
    question_start: int
    context_span: tuple[int, int]
    template: str = RAG_TEMPLATE

    def __str__(self) -> str:
        return self.text


def rag_prompt(question: str, context: str, *, template: str | None = None) -> RagPrompt:
    """The RAG prompt for ``question`` with ``context`` (Wadhwa et al. 2024's template by default).

    Args:
        question: the factual query to complete, e.g. ``"The Eiffel Tower is located in"``.
        context: the retrieved passage placed before it.
        template: another template with the fields ``{context}`` and ``{question}``.

    Returns:
        :class:`RagPrompt`: ``.text`` is the prompt; ``.question_start`` the character where the
        question starts (its last occurrence), ``.context_span`` the context's ``[start, end)``.
    """
    if not isinstance(context, str) or not context.strip():
        raise PromptError("the context is empty: give the retrieved text, or no context at all")
    if not isinstance(question, str) or not question.strip():
        raise PromptError("the question is empty: give the query the model should complete")
    template = template or RAG_TEMPLATE
    if "{context}" not in template or "{question}" not in template:
        raise PromptError("a RAG template needs the fields {context} and {question}, e.g. "
                          + repr(RAG_TEMPLATE))
    ctx, q = context.strip(), question.strip()
    text = template.format(context=ctx, question=q)
    c = text.index(ctx)
    return RagPrompt(text, q, ctx, text.rindex(q), (c, c + len(ctx)), template)


# ---------------------------------------------------------------------- the attention sink
def bos_prefix(tokenizer, bos: bool | str | None) -> str:
    """The text to put before a prompt: ``""`` (None / False), the tokenizer's BOS (True), or ``bos``.

    interp tokenises with the tokenizer's own special tokens; a model whose tokenizer adds no BOS
    (SmolLM2, GPT-2) then has the prompt's first token at position 0, and that token becomes the
    attention sink.  A prefix — the tokenizer's BOS, or a chosen token such as ``"<|endoftext|>"``
    — moves the sink off the prompt.  The prompt is different, so p_clean changes: results record
    the prefix.
    """
    if bos is None or bos is False:
        return ""
    if bos is True:
        if not getattr(tokenizer, "bos_token", None):
            raise PromptError("bos=True: the tokenizer has no BOS token; pass the token to prepend instead, "
                              "e.g. bos='<|endoftext|>'")
        return tokenizer.bos_token
    if not isinstance(bos, str) or not bos:
        raise PromptError(f"bos must be True (the tokenizer's BOS), a non-empty token text, or None, not {bos!r}")
    return bos


def sink_is_content(tokenizer, first_token_id: int) -> bool:
    """Whether position 0 holds a content token (not a special token such as BOS): then it is the sink."""
    return int(first_token_id) not in set(getattr(tokenizer, "all_special_ids", []) or [])
