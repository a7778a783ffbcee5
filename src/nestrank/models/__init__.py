"""Models: backbone loading, pooling, the dense bi-encoder and the rerankers.

Importing this package is cheap; torch and transformers load on first use.
"""

from nestrank.models.backbone import load_backbone, resolve_device, resolve_dtype
from nestrank.models.cpu_dtype import SlowDtypeWarning
from nestrank.models.dense import DenseEncoder, EncoderConfig
from nestrank.models.matryoshka import (
    MatryoshkaConfig,
    MatryoshkaReranker,
    Profile,
    parse_config,
    read_profiles,
    write_profiles,
)
from nestrank.models.pointwise import PointwiseReranker
from nestrank.models.reranker import RankedDocument, Reranker

__all__ = [
    "DenseEncoder",
    "EncoderConfig",
    "MatryoshkaConfig",
    "MatryoshkaReranker",
    "PointwiseReranker",
    "Profile",
    "RankedDocument",
    "Reranker",
    "SlowDtypeWarning",
    "load_backbone",
    "parse_config",
    "read_profiles",
    "resolve_device",
    "resolve_dtype",
    "write_profiles",
]
