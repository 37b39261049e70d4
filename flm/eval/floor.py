"""The entropy floor: when a row's samples are degenerate (MATH.md §4).

Repetitive text (``the the the ...``) has a low mean sample entropy and can still score a low Gen
PPL, so Gen PPL alone would call it the better model. A row (or a registered version) is
**degenerate** when

    H(samples) < floor · H(held-out text)

with ``H`` the mean per-sample entropy (nats) of the token histogram and ``floor`` =
``eval.entropy_floor`` in (0, 1]. The report, the plots, the registry tags and the promotion rule
all ask :func:`is_degenerate`; this module imports nothing heavy.
"""

from __future__ import annotations

__all__ = ["entropy_limit", "is_degenerate"]


def entropy_limit(reference_entropy: float, floor: float) -> float:
    """The entropy (nats) a row must reach: ``floor · reference_entropy``."""
    return float(floor) * float(reference_entropy)


def is_degenerate(entropy: float, reference_entropy: float, floor: float) -> bool:
    """``entropy < floor · reference_entropy`` (all scalars; entropies in nats)."""
    return bool(float(entropy) < entropy_limit(reference_entropy, floor))
