"""The instructor's side of notebook grading (docs/GRADING.md); students only need
``vit_course.grading`` (``check``).

Modules:

- ``markers``: source notebook → student and solution versions (``generate``)
- ``reference``: reference answers and hidden cases; importing it attaches the hidden cases
  to the questions registered in ``vit_course.tools.grading.questions``
- ``assignment``: what the grader reads from the source notebook
- ``executor``: run one notebook in a fresh kernel in its own process, with limits
  (``_run_one`` is that process, ``_limit`` the kernel's memory-capped launcher)
- ``grader``: batch grading of a folder of submissions
- ``feedback``: the CSV rows and the students' feedback files
- ``cli``: ``python -m vit_course.grading {generate,grade}``

Nothing is imported here, so starting ``_run_one`` or ``_limit`` stays cheap.
"""
