"""Command line: ``python -m vit_course.grading {generate,grade} ...`` (see docs/GRADING.md).

The commands live in ``vit_course.tools.grading.cli``; this module only starts them.
"""

from __future__ import annotations

import sys

# Skip jsonschema's IRI grammar build (rfc3987_syntax, 2-3 s of CPU at import) in this
# command-line process; nbformat's schema uses no IRI formats.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

from vit_course.tools.grading.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
