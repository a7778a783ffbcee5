"""Training: hard-negative mining, the retriever trainer (RepLLaMA recipe), the Matryoshka reranker trainer.

Importing this package is cheap; torch, transformers and peft load when training starts.
"""

from nestrank.train.config import TrainConfig, config_from_dict, load_config
from nestrank.train.mining import MiningStats, mine_groups, mine_to_file
from nestrank.train.reranker import RerankerTrainer, train_reranker
from nestrank.train.retriever import RetrieverTrainer, TrainResult, train_retriever

__all__ = [
    "MiningStats",
    "RerankerTrainer",
    "RetrieverTrainer",
    "TrainConfig",
    "TrainResult",
    "config_from_dict",
    "load_config",
    "mine_groups",
    "mine_to_file",
    "train_reranker",
    "train_retriever",
]
