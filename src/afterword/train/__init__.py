"""Training: the CPU preference (reward) model, scoring, and TRL + PEFT LoRA fine-tuning.

Nothing here imports torch at module load: the reward model needs only numpy,
scikit-learn and the ONNX embedder, and ``finetune`` imports torch,
transformers, trl and peft when it runs (the ``train`` extra).
"""

from afterword.train.finetune import TRAIN_KINDS, FinetuneResult, finetune, load_training_data
from afterword.train.reward import RewardConfig, RewardModel, RewardResult, train_reward, train_transformer_reward
from afterword.train.score import rank_candidates, score_traffic

__all__ = [
    "RewardConfig",
    "RewardModel",
    "RewardResult",
    "train_reward",
    "train_transformer_reward",
    "score_traffic",
    "rank_candidates",
    "TRAIN_KINDS",
    "FinetuneResult",
    "finetune",
    "load_training_data",
]
