"""The Matryoshka reranker (Liu et al. 2025): one LLM reranker whose depth and width are chosen per call.

Modules, in the order a call travels through them:

- :mod:`.config`: configuration strings (``depth=15,compress=8:0.5``) -> :class:`MatryoshkaConfig`;
- :mod:`.profiles`: named configurations (``light``...) from a model directory's ``profiles.json``;
- :mod:`.inputs`: a (query, passage) pair -> token ids with the passage span; left-padded batches;
- :mod:`.engine`: the layer-by-layer forward with early exits and token merging (section 3);
- :mod:`.token_merge`: importance-aware merging of passage tokens;
- :mod:`.compensation`: V-LoRA per layer + H-LoRA per compression factor (section 3.3);
- :mod:`.checkpoint`: the checkpoint directory (heads, compensation, settings, profiles);
- :mod:`.flops`: analytic FLOPs of a configuration;
- :mod:`.reranker`: :class:`MatryoshkaReranker`, which ties them together.

Importing this package is cheap; torch and transformers load on first use.
"""

from nestrank.models.matryoshka.config import MatryoshkaConfig, parse_config
from nestrank.models.matryoshka.inputs import DEFAULT_PROMPT, DEFAULT_TEMPLATE
from nestrank.models.matryoshka.profiles import Profile, read_profiles, write_profiles
from nestrank.models.matryoshka.reranker import ConfigLike, MatryoshkaReranker, UntrainedExitWarning

__all__ = [
    "DEFAULT_PROMPT",
    "DEFAULT_TEMPLATE",
    "ConfigLike",
    "MatryoshkaConfig",
    "MatryoshkaReranker",
    "Profile",
    "parse_config",
    "UntrainedExitWarning",
    "read_profiles",
    "write_profiles",
]
