"""Data: the pizza/steak/sushi download, transforms and loaders, and synthetic ground-truth data.

This package draws and loads data; it trains nothing (the synthetic data's ViT is
:mod:`vit_course.models.synthetic`). The notebooks' names are importable from here; the
rest (``verify_dataset``, ``DataError``, ``SyntheticFood``, ...) from the modules
:mod:`.download`, :mod:`.loaders` and :mod:`.synthetic`.

The names of :mod:`.loaders` are imported on first use: that module imports torchvision,
which takes seconds (it loads ``torch._dynamo``), and code that only draws synthetic
images (notebook 08, every graded submission) never needs it."""

from . import synthetic  # noqa: F401
from .download import default_data_dir, download_pizza_steak_sushi  # noqa: F401

_LOADERS = ("create_dataloaders", "imagenet_transform", "load_image", "simple_transform")


def __getattr__(name: str):
    if name in _LOADERS:
        from . import loaders

        return getattr(loaders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
