"""``python -m vit_course.explain IMAGE [--method ...] [--out map.png]``: explain one image.

The command lives in :mod:`vit_course.tools.explain_cli` (``--help`` lists the options).
"""

import sys

from vit_course.tools.explain_cli import main

if __name__ == "__main__":
    sys.exit(main())
