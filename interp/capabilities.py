"""What an engine can do, by name: methods ask ``model.supports(X)``, never for an engine's name.

* :data:`EDIT_SCORES` — a block of attention edges (site ``attn_scores``) reaches the
  pre-softmax scores (needs eager attention);
* :data:`LAST_LOGITS` — the engine can unembed the last position only (the LM head is ~20% of a
  small model's forward);
* :data:`SWITCH_ATTENTION` — the attention implementation can be switched to eager after
  loading (an engine that built its own graph from the model cannot);
* :data:`GRADIENTS` — ``Model.run(keep_grad=True)`` hands the autograd graph to the caller (the
  reads with ``.grad``).  Every engine, remote ones too, runs ``keep_grad=True`` *with* ``reduce=``:
  the reduction runs its backward passes where the model runs (attribution patching does);
* :data:`SKIP_WORK` — derived rows of a plan run from their first edit on
  (:mod:`interp.skipping`), through the primitives of :class:`interp.engines.base.Engine`;
* :data:`REMOTE` — the model runs elsewhere (NDIF, or its local simulation; :mod:`interp.remote`):
  no weights are local and no Python hook can run there, so ``Model.run`` hands the engine the
  compiled plan as data (``engine.run_plan``) and computations on the weights go to the server
  (``Model.run(reduce=...)``, ``Model.compute``).
"""

EDIT_SCORES = "edit_scores"
LAST_LOGITS = "last_logits"
SWITCH_ATTENTION = "switch_attention"
GRADIENTS = "gradients"
SKIP_WORK = "skip_work"
REMOTE = "remote"
CAPABILITIES = (EDIT_SCORES, LAST_LOGITS, SWITCH_ATTENTION, GRADIENTS, SKIP_WORK, REMOTE)
