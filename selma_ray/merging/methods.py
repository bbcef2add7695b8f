"""The one list of merge methods and the checks of the merge options; imports no torch.

:data:`METHODS` is what the config (``merge.method``), the CLI (``selma-ray merge --method``)
and the merge itself accept; the groups below it say which options each method uses.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "DARE_METHODS",
    "DENSITY_METHODS",
    "EXACT_METHODS",
    "METHODS",
    "SVD_METHODS",
    "Method",
    "MergeOptionError",
    "check_options",
]

Method = Literal["linear", "cat", "ties", "dare_linear", "dare_ties", "svd"]
#: Every merge method, in the order the CLI lists them.
METHODS: tuple[str, ...] = get_args(Method)
#: Methods whose merged update equals the weighted sum of the experts' updates.
EXACT_METHODS: tuple[str, ...] = ("linear", "cat")
#: Methods that keep a ``density`` fraction of each expert's update (TIES / DARE).
DENSITY_METHODS: tuple[str, ...] = ("ties", "dare_linear", "dare_ties")
#: Methods with random masks, drawn from the seed.
DARE_METHODS: tuple[str, ...] = ("dare_linear", "dare_ties")
#: Methods that end with a truncated SVD at ``svd_rank``.
SVD_METHODS: tuple[str, ...] = ("svd", *DENSITY_METHODS)


class MergeOptionError(ValueError):
    """A merge option (method, weights, density, svd_rank) is invalid, as opposed to the experts.

    The merge stage reports it as a :class:`~selma_ray.config.ConfigError`.
    """


def check_options(method: str, density: float, svd_rank: int | None) -> None:
    """Raise :class:`MergeOptionError` naming the ``merge.*`` field for a bad option."""
    if method not in METHODS:
        msg = f"merge method {method!r} is unknown; choose one of {list(METHODS)} (merge.method)"
        raise MergeOptionError(msg)
    if not 0 < density <= 1:
        msg = f"density must be in (0, 1], got {density} (merge.density)"
        raise MergeOptionError(msg)
    if svd_rank is not None and svd_rank < 1:
        msg = f"svd_rank must be >= 1, got {svd_rank} (merge.svd_rank)"
        raise MergeOptionError(msg)
