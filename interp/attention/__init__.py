"""Attention: token→token knockouts, per-head per-source contributions, RAG context flow.

* :mod:`.knockout` — :func:`attention_knockout` (Geva et al. 2023) and the dataset sweep
  :func:`knockout_sweep`;
* :mod:`.contributions` — :func:`attention_contributions`: ``‖A[h,t,s] · v_s W_O^h‖`` per layer,
  head and source token, group sums, and direct logit attribution per head;
* :mod:`.rag` — :func:`rag_flow`: both of the above with and without a retrieved context.
"""

from ..windows import default_window
from .contributions import ContributionResult, attention_contributions, contribution_vectors
from .knockout import (KnockoutResult, KnockoutSweepResult, attention_knockout, ensure_eager,
                       knockout_logits, knockout_sweep, source_positions)
from .rag import RagFlowResult, rag_flow

__all__ = ["ContributionResult", "KnockoutResult", "KnockoutSweepResult", "RagFlowResult",
           "attention_contributions", "attention_knockout", "contribution_vectors", "default_window",
           "ensure_eager", "knockout_logits", "knockout_sweep", "rag_flow", "source_positions"]
