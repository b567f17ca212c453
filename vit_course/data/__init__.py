"""Data: the pizza/steak/sushi download, transforms and loaders, and synthetic ground-truth data."""

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
    IMAGENET_MEAN,
    IMAGENET_STD,
    TensorImageDataset,
    create_dataloaders,
    imagenet_transform,
    load_image,
    simple_transform,
)
from .synthetic import SyntheticFood, load_or_train_synthetic_vit, make_image, make_two_object_image, mask_to_grid, synthetic_dataloaders, train_synthetic_vit  # noqa: F401,E501
