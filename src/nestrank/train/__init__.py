"""Training: hard-negative mining, the training loop and its trainers (retriever, Matryoshka and pointwise rerankers).

Importing this package is cheap; torch, transformers and peft load when training starts.
"""

from nestrank.train.config import TrainConfig, config_from_dict, load_config
from nestrank.train.loop import RerankerTrainer, Trainer, TrainResult
from nestrank.train.matryoshka import MatryoshkaTrainer
from nestrank.train.mining import MiningStats, mine_groups, mine_to_file
from nestrank.train.pointwise import PointwiseTrainer
from nestrank.train.reranker import train_reranker
from nestrank.train.retriever import RetrieverTrainer, train_retriever

__all__ = [
    "MatryoshkaTrainer",
    "MiningStats",
    "PointwiseTrainer",
    "RerankerTrainer",
    "RetrieverTrainer",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "config_from_dict",
    "load_config",
    "mine_groups",
    "mine_to_file",
    "train_reranker",
    "train_retriever",
]
