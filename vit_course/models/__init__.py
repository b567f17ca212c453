"""Models: the course's Vision Transformer built from scratch (:mod:`.vit`) and the small one
trained on the synthetic images (:mod:`.synthetic`)."""

from .synthetic import (  # noqa: F401
    SYNTHETIC_SETTINGS,
    SYNTHETIC_VIT_CONFIG,
    build_synthetic_vit,
    load_or_train_synthetic_vit,
    train_synthetic_vit,
)
from .vit import (  # noqa: F401
    CONFIGS,
    MLPBlock,
    MultiheadSelfAttentionBlock,
    PatchEmbedding,
    TransformerEncoderBlock,
    ViT,
    build_vit,
    count_parameters,
    format_parameter_table,
    parameter_table,
)
