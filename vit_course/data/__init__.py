"""Data: the pizza/steak/sushi download, transforms and loaders, and synthetic ground-truth data.

This package draws and loads data; it trains nothing (the synthetic data's ViT is
:mod:`vit_course.models.synthetic`). The notebooks' names are importable from here; the
rest (``verify_dataset``, ``DataError``, ``SyntheticFood``, ...) from the modules
:mod:`.download`, :mod:`.loaders` and :mod:`.synthetic`."""

from . import synthetic  # noqa: F401
from .download import default_data_dir, download_pizza_steak_sushi  # noqa: F401
from .loaders import (  # noqa: F401
    create_dataloaders, imagenet_transform, load_image, simple_transform,
)
