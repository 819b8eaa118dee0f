"""Windows of consecutive layers around a centre layer: the one place that says which layers.

Causal tracing restores MLP / attention outputs over a window of layers (Meng et al. 2022) and
attention knockout blocks edges over one (Geva et al. 2023).  Both papers' code uses the same
formula — ROME's ``causal_trace.py`` builds ``range(max(0, l - k // 2), min(L, l - (-k // 2)))``
and Geva et al.'s ``dissecting_factual_predictions`` copies it — so for an even ``k`` the window
has ``k/2`` layers before the centre and ``k/2 − 1`` after it (``[l−5, l+4]`` for ``k = 10``).
ROME's paper text describes the other placement, ``[l−4, l+5]``: ``(k−1)//2`` layers before and
``k//2`` after.  For an odd ``k`` the two agree (the window is centred).

:func:`window_layers` is written once with both placements as named conventions
(:data:`WINDOW_CONVENTIONS`); every method takes ``"rome_code"`` by default (the papers' code, so
interp's numbers match theirs), and results record the exact layer set of every window.
"""

from __future__ import annotations

import math

from .errors import LayerIndexError

#: convention name -> where its ``k`` layers sit around the centre ``l``
WINDOW_CONVENTIONS: dict[str, str] = {
    "rome_code": "ROME's and Geva et al.'s code: range(l - k//2, l + ceil(k/2)), clipped; [l-5, l+4] for k=10",
    "rome_paper": "ROME's paper text: (k-1)//2 layers before, k//2 after, clipped; [l-4, l+5] for k=10",
}
DEFAULT_CONVENTION = "rome_code"


def window_layers(centre: int, k: int, n_layers: int, convention: str = DEFAULT_CONVENTION) -> list[int]:
    """The layers of a ``k``-layer window around ``centre``, clipped to ``0..n_layers-1``.

    ``convention="rome_code"`` (default): ``range(max(0, c - k//2), min(L, c - (-k//2)))`` — the
    formula of ROME's ``causal_trace.py`` that Geva et al.'s knockout code reuses.
    ``convention="rome_paper"``: ``(k-1)//2`` layers before the centre and ``k//2`` after.
    Windows near the ends of the model are shorter, as in both papers' code.
    """
    if check_convention(convention) == "rome_code":
        lo, hi = centre - k // 2, centre - (-k // 2)
    else:
        lo = centre - (k - 1) // 2
        hi = lo + k
    return list(range(max(0, lo), min(n_layers, hi)))


def default_window(n_layers: int) -> int:
    """Odd number of layers nearest to ``n_layers / 5`` (ties up), at least 1, at most n_layers.

    Geva et al. use 9 for the 48-layer GPT-2 XL; this gives 9 there, 7 for the 30-layer default
    model, 1 for a 3-layer tiny model.
    """
    x = n_layers / 5
    k = 2 * math.floor((x - 1) / 2 + 0.5) + 1  # nearest odd, .5 rounds up
    return max(1, min(k, n_layers if n_layers % 2 else n_layers - 1))


def check_window(window: int | None, n_layers: int, *, default: int | None = None,
                 allow_larger: bool = False) -> int:
    """A window size as a positive int, or a clear :class:`~interp.errors.LayerIndexError`.

    ``None`` gives ``default`` (or :func:`default_window`).  ``allow_larger`` accepts a window
    wider than the model (ROME's tracing does: it is clipped to the model).
    """
    if window is None:
        return default_window(n_layers) if default is None else default
    if not isinstance(window, int) or isinstance(window, bool):
        raise LayerIndexError(f"window must be an integer number of layers, not {window!r}")
    if window < 1:
        raise LayerIndexError(f"window={window}: a window has at least 1 layer")
    if window > n_layers and not allow_larger:
        raise LayerIndexError(
            f"window={window} is larger than the model ({n_layers} layers); use 1..{n_layers} "
            f"(default {default_window(n_layers)}, about a fifth of the layers)")
    return window


def check_convention(convention: str) -> str:
    """``convention`` if it is one of :data:`WINDOW_CONVENTIONS`, else a clear error naming them."""
    if convention not in WINDOW_CONVENTIONS:
        raise LayerIndexError(f"unknown window convention {convention!r}; choose from "
                              f"{', '.join(WINDOW_CONVENTIONS)}")
    return convention
