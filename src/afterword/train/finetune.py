"""Fine-tuning with TRL + PEFT LoRA: ``afterword train sft|dpo|kto`` (and the transformer reward model).

The input is a dataset folder made by :func:`afterword.datasets.build_dataset`
(its ``dataset_card.json`` says the kind, the format and the lineage export
id). OpenAI and ShareGPT folders are converted back to TRL's columns on load.
The output is a LoRA adapter (``adapter_model.safetensors`` +
``adapter_config.json``), ``training_metrics.json`` (every logged step: loss,
reward margins, ...) and a model card ``README.md`` that names the dataset and
its lineage. The model is recorded in the store's lineage tables as an export
of kind ``model`` holding the dataset's messages, so ``afterword forget``
marks it stale together with its dataset.

It runs on CPU (float32) and uses a GPU when one is present (bf16 where
supported). torch, transformers, trl, peft and datasets are imported here,
late (the ``train`` extra).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afterword.datasets.build import export_items
from afterword.datasets.formats import from_openai, from_sharegpt
from afterword.errors import ExportError, require
from afterword.export import record_export
from afterword.records import utcnow
from afterword.store.store import Store
from afterword.train.base import DEFAULT_BASE, default_device, load_model, load_tokenizer

__all__ = ["TRAIN_KINDS", "FinetuneResult", "load_training_data", "finetune"]

#: Trainer kind -> dataset kinds it accepts.
TRAIN_KINDS: dict[str, tuple[str, ...]] = {
    "sft": ("sft",),
    "dpo": ("dpo", "reward"),
    "kto": ("kto",),
    "reward": ("reward", "dpo"),
}


@dataclass
class FinetuneResult:
    kind: str
    out_dir: str
    base: str
    device: str
    steps: int
    seconds: float
    steps_per_s: float
    history: list[dict[str, Any]] = field(repr=False)
    dataset: str = ""
    dataset_export_id: str | None = None
    export_id: str | None = None

    def series(self, key: str) -> list[float]:
        """The logged values of ``key`` (e.g. ``loss``, ``rewards/margins``), in step order."""
        return [float(h[key]) for h in self.history if key in h]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        keys = sorted({k for h in self.history for k in h if k != "step" and isinstance(h[k], int | float)})
        for k in keys:
            s = self.series(k)
            if len(s) >= 2 and not k.startswith(("train_", "epoch", "learning_rate", "grad_norm")):
                n = max(1, len(s) // 4)
                out[k] = {
                    "first": s[0],
                    "last": s[-1],
                    "first_quarter_mean": sum(s[:n]) / n,
                    "last_quarter_mean": sum(s[-n:]) / n,
                }
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "out_dir": self.out_dir,
            "base": self.base,
            "device": self.device,
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
            "steps_per_s": round(self.steps_per_s, 4),
            "dataset": self.dataset,
            "dataset_export_id": self.dataset_export_id,
            "export_id": self.export_id,
            "metrics": self.summary(),
        }


def load_training_data(dataset_dir: str | Path, kind: str) -> tuple[Any, dict[str, Any]]:
    """The folder's splits as a ``datasets.DatasetDict`` in TRL's columns, and its card."""
    require("datasets", "train")
    from datasets import load_dataset

    folder = Path(dataset_dir)
    card_path = folder / "dataset_card.json"
    if not card_path.exists():
        raise ExportError(f"{folder} has no dataset_card.json: build it with `afterword dataset build`")
    card = json.loads(card_path.read_text())
    if card["kind"] not in TRAIN_KINDS[kind]:
        raise ExportError(
            f"`train {kind}` needs a {' or '.join(TRAIN_KINDS[kind])} dataset; {folder} is {card['kind']}"
        )
    ext = card.get("file_format", "jsonl")
    files = {s: str(folder / f"{s}.{ext}") for s in ("train", "test") if (folder / f"{s}.{ext}").exists()}
    if "train" not in files:
        raise ExportError(f"{folder} has no train split")
    ds = load_dataset("json" if ext == "jsonl" else "parquet", data_files=files)
    if card["format"] != "trl":
        conv = from_openai if card["format"] == "openai" else from_sharegpt
        ds = ds.map(conv, remove_columns=ds["train"].column_names)
    return ds, card


class _History:
    """A TrainerCallback (built lazily so transformers is imported late) that keeps every log line."""

    def __new__(cls, sink: list[dict[str, Any]]) -> Any:
        from transformers import TrainerCallback

        class _CB(TrainerCallback):  # type: ignore[misc]
            def on_log(
                self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
            ) -> None:
                if logs:
                    sink.append({"step": state.global_step, **logs})

        return _CB()


def _trainer(kind: str, common: dict[str, Any], beta: float) -> tuple[Any, Any]:
    import trl

    if kind == "sft":
        return trl.SFTTrainer, trl.SFTConfig(**common)
    if kind == "dpo":
        return trl.DPOTrainer, trl.DPOConfig(beta=beta, **common)
    if kind == "kto":
        return trl.KTOTrainer, trl.KTOConfig(beta=beta, **common)
    return trl.RewardTrainer, trl.RewardConfig(**common)


def finetune(
    kind: str,
    dataset: str | Path,
    *,
    out: str | Path = "models/adapter",
    base: str | None = None,
    max_steps: int = -1,
    epochs: float = 1.0,
    learning_rate: float = 1e-4,
    batch_size: int = 2,
    grad_accum: int = 1,
    lora_r: int = 8,
    lora_alpha: int | None = None,
    lora_dropout: float = 0.0,
    beta: float = 0.1,
    max_length: int = 512,
    seed: int = 0,
    device: str | None = None,
    logging_steps: int = 1,
    store: Store | None = None,
    command: str | None = None,
    model: Any = None,
    tokenizer: Any = None,
) -> FinetuneResult:
    """LoRA fine-tune ``base`` (default SmolLM2-135M-Instruct from its GGUF) with TRL's ``kind`` trainer.

    ``model``/``tokenizer`` may be passed in already loaded (tests, benches); ``store`` records the lineage.
    """
    if kind not in TRAIN_KINDS:
        raise ExportError(f"unknown training kind {kind!r}; known: {', '.join(TRAIN_KINDS)}")
    for mod in ("torch", "transformers", "trl", "peft"):
        require(mod, "train")
    import torch
    from peft import LoraConfig

    ds, card = load_training_data(dataset, kind)
    device = device or default_device()
    tok = tokenizer or load_tokenizer(base)
    if model is None:
        model = load_model(base, num_labels=1 if kind == "reward" else None)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    use_bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    common: dict[str, Any] = {
        "output_dir": str(out_dir / "checkpoints"),
        "max_steps": max_steps,
        "num_train_epochs": epochs,
        "per_device_train_batch_size": batch_size,
        "gradient_accumulation_steps": grad_accum,
        "learning_rate": learning_rate,
        "logging_steps": logging_steps,
        "save_strategy": "no",
        "report_to": "none",
        "seed": seed,
        "use_cpu": device == "cpu",
        "bf16": use_bf16,
        "max_length": max_length,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        # TRL turns it on by default to save GPU memory; on CPU a 135M model fits, and recomputing costs ~30%.
        "gradient_checkpointing": device != "cpu",
    }
    trainer_cls, args = _trainer(kind, common, beta)
    lora = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha or 2 * lora_r,
        lora_dropout=lora_dropout,
        target_modules="all-linear",
        task_type="SEQ_CLS" if kind == "reward" else "CAUSAL_LM",
    )
    history: list[dict[str, Any]] = []
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=ds["train"],
        processing_class=tok,
        peft_config=lora,
        callbacks=[_History(history)],
    )
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    steps = int(trainer.state.global_step)
    trainer.save_model(str(out_dir))
    base_name = base or DEFAULT_BASE
    res = FinetuneResult(
        kind=kind,
        out_dir=str(out_dir),
        base=base_name,
        device=device,
        steps=steps,
        seconds=seconds,
        steps_per_s=steps / seconds if seconds else 0.0,
        history=history,
        dataset=str(Path(dataset).resolve()),
        dataset_export_id=card.get("export_id"),
    )
    if store is not None:
        items = export_items(store, card["export_id"]) if card.get("export_id") else []
        res.export_id = record_export(
            store,
            kind="model",
            fmt=f"lora-{kind}",
            path=str(out_dir.resolve()),
            command=command,
            card={"kind": f"lora-{kind}", **res.as_dict()},
            items=items,
        )
    (out_dir / "training_metrics.json").write_text(json.dumps({**res.as_dict(), "history": history}, indent=2) + "\n")
    _write_model_card(out_dir, res, card, command, common, lora_r)
    return res


def _write_model_card(
    out_dir: Path, res: FinetuneResult, card: dict[str, Any], command: str | None, common: dict[str, Any], r: int
) -> None:
    counts = card.get("counts", {})
    lines = [
        f"# LoRA adapter: {res.kind} on {res.base}\n",
        f"Trained {utcnow().isoformat()} with TRL + PEFT on `{res.device}`: {res.steps} steps in "
        f"{res.seconds:.1f} s ({res.steps_per_s:.3f} steps/s).\n",
        "## Dataset lineage\n",
        f"- dataset: `{res.dataset}` ({card.get('kind')}, {card.get('format')}, {counts.get('rows')} rows, "
        f"splits {counts.get('splits')}, redacted: {card.get('redacted')})",
        f"- dataset export id: `{res.dataset_export_id}`; built with `{card.get('command')}`",
        f"- this model's export id: `{res.export_id}`: `afterword dataset list` marks it stale when a user in its "
        "lineage is forgotten; retrain it then.\n",
        "## Training\n",
        "```json",
        json.dumps(
            {
                k: common[k]
                for k in (
                    "max_steps",
                    "num_train_epochs",
                    "per_device_train_batch_size",
                    "learning_rate",
                    "max_length",
                    "seed",
                )
            }
            | {"lora_r": r},
            indent=2,
        ),
        "```\n",
        "## Metrics (first -> last logged)\n",
        *[f"- {k}: {v['first']:.4f} -> {v['last']:.4f}" for k, v in res.summary().items()],
        "\n## Rebuild\n",
        f"```\n{command or '(library call)'}\n```",
    ]
    (out_dir / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
