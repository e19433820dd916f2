"""Hindsight-judge benchmark: afterword vs baselines on USS/ASAP rated turns.

    python bench/hindsight.py --format asap ../shared/data/asap/mwoz/test_mwoz.txt --name asap_mwoz
    python bench/hindsight.py --format uss ../shared/data/uss/CCPE.txt \
        --train ../shared/data/uss/MWOZ.txt ../shared/data/uss/SGD.txt --name uss_ccpe
    python bench/hindsight.py --format asap FILE --head path/to/hindsight_head.npz --name other_head

Prints the JSON of afterword.judge.bench.run_bench and writes it to
bench/results/hindsight_<name>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from afterword.judge.bench import run_bench
from afterword.judge.judge_config import JudgeConfig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark the hindsight judge against baselines.")
    ap.add_argument("files", nargs="+", help="test files (ASAP split lines or USS dialogues)")
    ap.add_argument("--format", required=True, choices=["asap", "uss"])
    ap.add_argument("--train", nargs="+", default=None, help="training files for the baselines")
    ap.add_argument("--name", default=None, help="result name (default: the first file's stem)")
    ap.add_argument("--endpoint", default=None, help="OpenAI-compatible endpoint for an LLM-judge baseline")
    ap.add_argument("--llm-model", default=None, help="model name for --endpoint (default: the first it lists)")
    ap.add_argument("--llm-limit", type=int, default=200, help="examples the LLM judge grades (evenly spread)")
    ap.add_argument(
        "--head", default=None, help="the judge's head: finetuned (default, with lr beside it), lr, or a .npz path"
    )
    args = ap.parse_args(argv)
    result = run_bench(
        args.format,
        args.files,
        train_files=args.train,
        endpoint=args.endpoint,
        llm_model=args.llm_model,
        llm_limit=args.llm_limit,
        config=JudgeConfig(model_path=args.head),
    )
    name = args.name or Path(args.files[0]).stem
    out = Path(__file__).parent / "results" / f"hindsight_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
