"""Concept vectors (ConceptVectors, Hong et al. 2024): value vectors that carry one concept.

* :mod:`interp.concepts.vectors` — find candidates by their vocabulary projection, look one up
  by (layer, index), edit it temporarily, causal check on related vs unrelated questions.
* :mod:`interp.concepts.unlearning` — intrinsic evaluation between two checkpoints (cosine,
  relative L2, top-k Jaccard) plus behavioural QA, with a gradient-ascent baseline and the
  "Needle"-style ablation of the vector.
"""

from .vectors import (CausalCheckResult, ConceptCandidates, causal_check, concept_terms, concept_vector,
                      edited_value_vectors, find_concept_vectors)

__all__ = ["ConceptCandidates", "CausalCheckResult", "find_concept_vectors", "concept_vector", "concept_terms",
           "edited_value_vectors", "causal_check"]
