"""MLP neurons as readable units: decoding through the LM head, clamping, corpus statistics.

* :mod:`interp.neurons.decode` — every neuron's write (``out``) and read (``up``, ``gate``)
  directions through the unembedding, top-k / bottom-k tokens (Davies 2025), search and
  checkpoint comparison.
* :mod:`interp.neurons.clamp` — set neurons to a value during a forward or greedy generation and
  measure a token's probability (compiled into one :class:`~interp.interventions.InterventionPlan`).
* :mod:`interp.neurons.stats` — streamed corpus statistics: activation frequency, dead neurons,
  token detectors, positional neurons (Voita et al. 2023).
"""

from .clamp import ClampResult, clamp_effect, clamp_generate, clamp_plan
from .decode import (MapComparison, NeuronMap, compare_checkpoints, compare_maps, decode_neuron,
                     decode_neurons, resolve_tokens)
from .stats import NeuronStats, neuron_stats

__all__ = ["NeuronMap", "MapComparison", "decode_neurons", "decode_neuron", "compare_maps",
           "compare_checkpoints", "resolve_tokens", "ClampResult", "clamp_effect", "clamp_generate",
           "clamp_plan", "NeuronStats", "neuron_stats"]
