"""Exercise checks for the graded notebook (08).

In a notebook::

    from vit_course.grading import check
    check("q1", deletion_auc)      # public cases: which failed, expected vs got

This package is only the door a notebook opens: the checks themselves are exercise
infrastructure, not course material, and live with the instructor's tools in
``vit_course.tools.grading`` (see docs/GRADING.md): ``questions`` (case registry, public
cases), ``checks`` (``check``, and ``autograde``, the entry point of the hidden-test cells),
``markers`` (source → student/solution versions), ``reference`` (reference answers, hidden
cases; grader only), ``executor`` (run a notebook in a fresh kernel in its own process),
``grader`` (batch grading), ``feedback`` (CSV, feedback files), ``cli``. The commands
still start from here::

    python -m vit_course.grading generate notebooks/source/08_evaluation_source.ipynb
    python -m vit_course.grading grade submissions/ --source notebooks/source/08_evaluation_source.ipynb --out grades.csv
"""

from vit_course.tools.grading.checks import CheckResult, autograde, check
from vit_course.tools.grading.questions import Case, get_question, register_question, registered_questions

__all__ = [
    "Case",
    "CheckResult",
    "autograde",
    "check",
    "get_question",
    "register_question",
    "registered_questions",
]
