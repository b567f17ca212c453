"""``python -m vit_course.standin TORCH_HOME``: write a RANDOM stand-in ViT-B/16 checkpoint for
offline tests. The code lives in :mod:`vit_course.tools.standin`."""

import sys

from .tools.standin import checkpoint_filename, main, seed_standin_torch_home  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
