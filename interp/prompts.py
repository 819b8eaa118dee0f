"""The RAG prompt: a retrieved context placed before the question, in the papers' template.

"From RAGs to rich parameters" (Wadhwa et al. 2024) and Ghosh et al. 2024 ask the model::

    Information is below: {context} Given the context information and not prior knowledge,
    complete the following: {question}

Every method that runs "with a context" (causal tracing, activation patching, attention
knockouts and contributions, the RAG comparisons) builds its prompt here, so the template, its
placeholders (``{context}``, ``{question}``) and where the question and the context sit in the
text are defined once.  Both parts are stripped of surrounding white space before they are
placed; :class:`RagPrompt` carries the character positions a method needs to find the
question's subject (the question comes *after* the context, which may name the subject too).
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
