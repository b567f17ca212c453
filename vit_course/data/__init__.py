"""Data: the pizza/steak/sushi download, transforms and loaders, and synthetic ground-truth data.

This package draws and loads data; it trains nothing (the synthetic data's ViT is
:mod:`vit_course.models.synthetic`)."""

from .download import (  # noqa: F401
    CLASS_NAMES,
    DATASET_URL,
    DATA_DIR_ENV,
    EXPECTED_COUNTS,
    SOURCE_ENV,
    DataError,
    default_data_dir,
    download_pizza_steak_sushi,
    verify_dataset,
)
from .loaders import (  # noqa: F401
    TensorImageDataset,
    create_dataloaders,
    imagenet_transform,
    load_image,
    simple_transform,
)
from .synthetic import SyntheticFood, make_image, make_two_object_image, synthetic_dataloaders  # noqa: F401
