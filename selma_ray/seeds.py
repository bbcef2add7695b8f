"""Seed derivation shared by the stages: every random choice derives from stable labels.

Both functions hash their inputs with SHA-256, so a seed is the same in every process, on every
machine and Python version, and independent of the order work is done in. They differ only in
encoding (kept as they are: changing either would change the prompts, images or training
batches of existing runs).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["derive_seed", "subseed"]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (stages 1, 2 and 5: prompts and image seeds)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def subseed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``seed`` and labels (stage 3: crops, batches, noise, LoRA init)."""
    blob = json.dumps([seed, *[str(p) for p in parts]], separators=(",", ":")).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") & ((1 << 63) - 1)
