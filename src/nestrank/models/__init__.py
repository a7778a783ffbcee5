"""Models: backbone loading, pooling and the dense bi-encoder.

Importing this package is cheap; torch and transformers load on first use.
"""

from nestrank.models.backbone import load_backbone, resolve_device, resolve_dtype
from nestrank.models.dense import DenseEncoder, EncoderConfig

__all__ = ["DenseEncoder", "EncoderConfig", "load_backbone", "resolve_device", "resolve_dtype"]
