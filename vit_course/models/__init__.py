"""Models: the course's Vision Transformer built from scratch (:mod:`.vit`) and the small one
trained on the synthetic images (:mod:`.synthetic`, whose other names are imported from
there)."""

from .synthetic import load_or_train_synthetic_vit  # noqa: F401
from .vit import (  # noqa: F401
    CONFIGS, MLPBlock, MultiheadSelfAttentionBlock, PatchEmbedding, TransformerEncoderBlock,
    ViT, build_vit, count_parameters, format_parameter_table, parameter_table,
)
