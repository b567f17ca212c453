"""``python -m vit_course.download [--all|--data|--weights]``: fetch the dataset and the
ViT-B/16 weights ahead of class. The code lives in :mod:`vit_course.tools.download`."""

import sys

from .tools.download import fetch_data, fetch_weights, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
