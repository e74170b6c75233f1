"""Deterministic stand-ins for pooling models: embeddings, rerank and score.

An embedding is a unit-norm Gaussian vector seeded by a hash of the input tokens and the
simulator seed: the same text always maps to the same vector, different texts to nearly
orthogonal ones. Relevance scores are token-set Jaccard similarities, which are cheap,
symmetric and in [0, 1], so rerank orders documents by word overlap with the query.
"""

from __future__ import annotations

import base64
import math
import random
import struct
from array import array
from collections.abc import Sequence
from hashlib import blake2b


def embed(token_ids: Sequence[int], dimensions: int, seed: int) -> list[float]:
    """A unit-norm vector of ``dimensions`` floats determined by (tokens, seed)."""
    hasher = blake2b(digest_size=8)
    hasher.update(seed.to_bytes(8, "little", signed=True))
    hasher.update(array("I", token_ids).tobytes())
    rng = random.Random(int.from_bytes(hasher.digest(), "little"))
    vector = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(value * value for value in vector)) or 1.0
    return [value / norm for value in vector]


def to_base64(vector: Sequence[float]) -> str:
    """Little-endian float32 bytes, base64-encoded, as OpenAI's ``encoding_format=base64``."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def similarity(left: Sequence[int], right: Sequence[int]) -> float:
    """Jaccard similarity of the two token sets (1.0 for two empty inputs)."""
    a, b = set(left), set(right)
    union = a | b
    if not union:
        return 1.0
    return len(a & b) / len(union)
