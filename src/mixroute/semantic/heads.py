"""Trained classification heads on top of the shared embedding.

A head is a multinomial logistic regression stored as plain arrays in an ``.npz`` file (no
pickles): ``coef`` (classes x dim), ``intercept``, ``classes``, a softmax ``temperature``
fitted for calibration, and the name of the embedding model it was trained on, so a head
is never used with vectors from a different model.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mixroute.config.schema import DOMAIN_LABELS

# The 14 MMLU-Pro categories, in the order the built-in head's classes use.
DOMAIN_CATEGORIES = DOMAIN_LABELS


class HeadError(RuntimeError):
    """A head file that is missing, malformed, or made for another embedding model."""


@dataclass(frozen=True)
class LinearHead:
    classes: tuple[str, ...]
    coef: npt.NDArray[np.float32]
    intercept: npt.NDArray[np.float32]
    temperature: float
    embedding_model: str

    def probabilities(self, vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Calibrated class probabilities for one vector (dim,) or a batch (n, dim)."""
        logits = (vectors @ self.coef.T + self.intercept) / self.temperature
        logits = logits - logits.max(axis=-1, keepdims=True)
        exp = np.exp(logits)
        result: npt.NDArray[np.float32] = (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)
        return result

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        """What the .npz holds (subclasses add their own fields)."""
        return {
            "classes": np.array(self.classes),
            "coef": self.coef.astype(np.float32),
            "intercept": self.intercept.astype(np.float32),
            "temperature": np.array(self.temperature, dtype=np.float64),
            "embedding_model": np.array(self.embedding_model),
        }

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = self.arrays()
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: Path, embedding_model: str | None = None) -> LinearHead:
        try:
            with np.load(path, allow_pickle=False) as data:
                head = cls(
                    classes=tuple(str(c) for c in data["classes"]),
                    coef=data["coef"].astype(np.float32),
                    intercept=data["intercept"].astype(np.float32),
                    temperature=float(data["temperature"]),
                    embedding_model=str(data["embedding_model"]),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise HeadError(f"cannot load classification head {path}: {exc}") from exc
        if embedding_model is not None and head.embedding_model != embedding_model:
            raise HeadError(
                f"{path} was trained on {head.embedding_model!r} embeddings, "
                f"not {embedding_model!r}: retrain it with `mixroute train`"
            )
        return head


def builtin_head_path(name: str) -> Path:
    return Path(str(resources.files("mixroute") / f"data/heads/{name}.npz"))
