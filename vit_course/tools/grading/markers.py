"""Source notebook → student and solution versions.

One source notebook holds everything: the prose, the reference solutions between
``# BEGIN SOLUTION`` / ``# END SOLUTION`` lines, and hidden-test cells whose first line is
``# HIDDEN TESTS``. Every graded cell carries ``metadata.vit_course``::

    {"id": "q1-code",   "kind": "solution",    "question": "q1"}
    {"id": "q1-check",  "kind": "check",       "question": "q1"}
    {"id": "q1-hidden", "kind": "hidden_test", "question": "q1", "points": 2}
    {"id": "q5-answer", "kind": "manual",      "question": "q5", "points": 3}

``id`` is unique in the notebook (the grader finds deleted or reordered cells by it),
``question`` groups cells into a CSV column, and ``points`` sits on the cells that earn
them: hidden tests (automatic) or manual cells (graded by hand).

- Student version: each marked block becomes a stub (``raise NotImplementedError(...)`` at
  the marker's indentation, or the block's ``# STUB:`` lines), hidden-test cells are
  removed, graded cells are made non-deletable and check cells read-only.
- Solution version: marker and ``# STUB:`` lines are removed, the solution code stays, and
  hidden-test cells stay too (it is the answer key: running it shows the reference
  solution earns full marks).

Both are written without outputs or execution counts, through ``nbformat.writes`` so the
bytes are the same every time (``--check`` compares bytes).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

from vit_course.tools.grading._io import write_atomic

METADATA_KEY = "vit_course"
KINDS = ("solution", "check", "hidden_test", "manual")
POINT_KINDS = ("hidden_test", "manual")

_BEGIN = re.compile(r"^(?P<indent>[ \t]*)(#\s*BEGIN SOLUTION\b.*|<!--\s*BEGIN SOLUTION\s*-->)\s*$")
_END = re.compile(r"^[ \t]*(#\s*END SOLUTION\b.*|<!--\s*END SOLUTION\s*-->)\s*$")
_STUB = re.compile(r"^(?P<indent>[ \t]*)#\s*STUB:\s?(?P<code>.*)$")
_HIDDEN = re.compile(r"^\s*#\s*HIDDEN TESTS\b")
_ID = re.compile(r"^[A-Za-z0-9_.-]+$")

MARKDOWN_STUB = "*Write your answer here.*"


@dataclass(frozen=True)
class CellInfo:
    """The validated ``metadata.vit_course`` of one cell.

    Args:
        id: unique cell id within the notebook.
        kind: one of ``KINDS``.
        question: question id (CSV column), e.g. ``"q1"``.
        points: points earned by this cell (hidden tests and manual cells), else 0.
    """

    id: str
    kind: str
    question: str
    points: float = 0.0


def cell_info(cell: dict, index: int | None = None) -> CellInfo | None:
    """Validated grading metadata of ``cell``, or ``None`` for an ungraded cell.

    Raises:
        ValueError: when the metadata is present but malformed (the message names the cell).
    """
    meta = cell.get("metadata", {}).get(METADATA_KEY)
    if meta is None:
        return None
    where = f"cell {index}" if index is not None else "cell"
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: metadata.{METADATA_KEY} must be an object, got {meta!r}")
    unknown = set(meta) - {"id", "kind", "question", "points"}
    if unknown:
        raise ValueError(
            f"{where}: unknown metadata.{METADATA_KEY} keys {sorted(unknown)}; "
            "allowed: id, kind, question, points"
        )
    cid, kind, question = meta.get("id"), meta.get("kind"), meta.get("question")
    if not isinstance(cid, str) or not _ID.match(cid):
        raise ValueError(f"{where}: id must be a string of letters, digits, '_', '.', '-', got {cid!r}")
    if kind not in KINDS:
        raise ValueError(f"{where} ({cid}): kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(question, str) or not _ID.match(question):
        raise ValueError(f"{where} ({cid}): question must be an id like 'q1', got {question!r}")
    points = meta.get("points")
    if kind in POINT_KINDS:
        if isinstance(points, bool) or not isinstance(points, (int, float)) or points <= 0:
            raise ValueError(f"{where} ({cid}): a {kind} cell needs points > 0, got {points!r}")
    elif points is not None:
        raise ValueError(
            f"{where} ({cid}): points on a {kind!r} cell are ignored; put them on the question's "
            "hidden_test or manual cell instead"
        )
    if kind != "manual" and cell.get("cell_type") != "code":
        raise ValueError(f"{where} ({cid}): a {kind} cell must be a code cell, got {cell.get('cell_type')!r}")
    return CellInfo(id=cid, kind=kind, question=question, points=float(points or 0.0))


def _lines(cell: dict) -> list[str]:
    source = cell.get("source", "")
    if isinstance(source, list):
        source = "".join(source)
    return source.split("\n")


def is_hidden_test(cell: dict) -> bool:
    """True when the cell's first non-blank line is ``# HIDDEN TESTS``."""
    for line in _lines(cell):
        if line.strip():
            return cell.get("cell_type") == "code" and bool(_HIDDEN.match(line))
    return False


def _split_blocks(lines: list[str], where: str) -> list[tuple[str, list[str], str]]:
    """Split ``lines`` into ``("text", lines, "")`` and ``("solution", lines, indent)`` parts."""
    parts: list[tuple[str, list[str], str]] = []
    current: list[str] = []
    indent: str | None = None
    for number, line in enumerate(lines, start=1):
        begin, end = _BEGIN.match(line), _END.match(line)
        if begin:
            if indent is not None:
                raise ValueError(f"{where}, line {number}: BEGIN SOLUTION inside another solution block")
            parts.append(("text", current, ""))
            current, indent = [], begin.group("indent")
        elif end:
            if indent is None:
                raise ValueError(f"{where}, line {number}: END SOLUTION without a BEGIN SOLUTION")
            parts.append(("solution", current, indent))
            current, indent = [], None
        else:
            current.append(line)
    if indent is not None:
        raise ValueError(f"{where}: BEGIN SOLUTION without an END SOLUTION; add the END line")
    parts.append(("text", current, ""))
    return parts


def _student_lines(parts: list[tuple[str, list[str], str]], question: str, markdown: bool) -> list[str]:
    out: list[str] = []
    for kind, lines, indent in parts:
        if kind == "text":
            out.extend(lines)
            continue
        stubs = [m for m in map(_STUB.match, lines) if m]
        if markdown:
            out.append(MARKDOWN_STUB)
        elif stubs:
            out.extend(m.group("indent") + m.group("code") for m in stubs)
        else:
            out.append(f'{indent}raise NotImplementedError("{question}: write your code here")')
    return out


def _solution_lines(parts: list[tuple[str, list[str], str]]) -> list[str]:
    out: list[str] = []
    for kind, lines, _ in parts:
        out.extend(lines if kind == "text" else [line for line in lines if not _STUB.match(line)])
    return out


def _clean(cell: dict, source: list[str]) -> dict:
    cell = copy.deepcopy(cell)
    cell["source"] = "\n".join(source)
    if cell.get("cell_type") == "code":
        cell["outputs"] = []
        cell["execution_count"] = None
    cell.get("metadata", {}).pop("execution", None)
    return cell


def graded_cells(nb: dict) -> list[CellInfo]:
    """Validated grading metadata of every graded cell, in notebook order.

    Raises:
        ValueError: on malformed metadata, duplicate ids, markers and metadata that
            disagree, or a question that is both automatic and manual.
    """
    infos: list[CellInfo] = []
    seen: dict[str, int] = {}
    question_kind: dict[str, str] = {}
    for index, cell in enumerate(nb.get("cells", [])):
        info = cell_info(cell, index)
        where = f"cell {index}"
        has_markers = _has_marker(cell)
        hidden = is_hidden_test(cell)
        if info is None:
            if has_markers or hidden:
                raise ValueError(
                    f"{where} has solution markers or '# HIDDEN TESTS' but no metadata.{METADATA_KEY}; "
                    'add e.g. {"id": "q1-code", "kind": "solution", "question": "q1"}'
                )
            continue
        where = f"cell {index} ({info.id})"
        if info.id in seen:
            raise ValueError(f"{where}: id {info.id!r} is already used by cell {seen[info.id]}; ids must be unique")
        seen[info.id] = index
        if hidden != (info.kind == "hidden_test"):
            raise ValueError(
                f"{where}: kind {info.kind!r} but the first line is "
                f"{'' if hidden else 'not '}'# HIDDEN TESTS'; the two must agree"
            )
        if info.kind == "solution" and not has_markers:
            raise ValueError(f"{where}: a solution cell needs a '# BEGIN SOLUTION' / '# END SOLUTION' block")
        if info.kind in ("check", "hidden_test") and has_markers:
            raise ValueError(f"{where}: a {info.kind} cell must not contain solution markers")
        if info.kind in POINT_KINDS:
            previous = question_kind.setdefault(info.question, info.kind)
            if previous != info.kind:
                raise ValueError(
                    f"{where}: question {info.question!r} has both hidden_test and manual points; "
                    "split it into two questions"
                )
        infos.append(info)
    return infos


def make_versions(source_nb: dict, source_name: str = "") -> tuple[dict, dict]:
    """Build the (student, solution) notebooks from a source notebook (dicts, not modified).

    Args:
        source_nb: the parsed source notebook.
        source_name: file name recorded in the versions' metadata.
    Returns:
        ``(student_nb, solution_nb)``.
    """
    graded_cells(source_nb)  # validates everything first
    student = copy.deepcopy(source_nb)
    solution = copy.deepcopy(source_nb)
    student["cells"], solution["cells"] = [], []
    for index, cell in enumerate(source_nb.get("cells", [])):
        info = cell_info(cell, index)
        where = f"cell {index}" + (f" ({info.id})" if info else "")
        parts = _split_blocks(_lines(cell), where)
        markdown = cell.get("cell_type") != "code"
        question = info.question if info else "exercise"
        solution["cells"].append(_clean(cell, _solution_lines(parts)))
        if info is not None and info.kind == "hidden_test":
            continue
        scell = _clean(cell, _student_lines(parts, question, markdown))
        if info is not None:
            scell["metadata"]["deletable"] = False
            if info.kind == "check":
                scell["metadata"]["editable"] = False
        student["cells"].append(scell)
    for nb, version in ((student, "student"), (solution, "solution")):
        nb.setdefault("metadata", {})[METADATA_KEY] = {"version": version, "source": source_name}
    return student, solution


def _has_marker(cell: dict) -> bool:
    return any(_BEGIN.match(x) or _END.match(x) for x in _lines(cell))


def read_notebook(path: str | Path) -> nbformat.NotebookNode:
    """Read and validate a notebook file (nbformat 4).

    Raises:
        ValueError: when the file is not valid JSON or not a valid nbformat-4 notebook.
    """
    path = Path(path)
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # json and nbformat raise several types
        raise ValueError(f"{path} is not a valid Jupyter notebook: {exc}") from exc
    return nb


def dumps_notebook(nb: dict) -> str:
    """Deterministic notebook text: nbformat's own layout (sorted keys, indent 1), newline-terminated."""
    node = nbformat.from_dict(nb)
    text = nbformat.writes(node, version=4)
    return text if text.endswith("\n") else text + "\n"


def default_output_paths(source: str | Path) -> tuple[Path, Path]:
    """Conventional paths: ``notebooks/source/NN_x_source.ipynb`` → ``notebooks/NN_x.ipynb``
    and ``notebooks/solutions/NN_x_solution.ipynb``.

    Raises:
        ValueError: when ``source`` does not follow the ``*_source.ipynb`` convention.
    """
    source = Path(source)
    if not source.name.endswith("_source.ipynb"):
        raise ValueError(
            f"source {source} does not end in '_source.ipynb'; pass --student and --solution explicitly"
        )
    stem = source.name[: -len("_source.ipynb")]
    root = source.parent.parent if source.parent.name == "source" else source.parent
    return root / f"{stem}.ipynb", root / "solutions" / f"{stem}_solution.ipynb"


def render_versions(source: str | Path) -> tuple[str, str]:
    """Student and solution notebook texts for the source file ``source``."""
    source = Path(source)
    nb = read_notebook(source)
    student, solution = make_versions(nb, source.name)
    return dumps_notebook(student), dumps_notebook(solution)


def generate_versions(source: str | Path, student: str | Path, solution: str | Path) -> None:
    """Write the student and solution versions of ``source`` (each file replaced atomically)."""
    student_text, solution_text = render_versions(source)
    write_atomic(Path(student), student_text)
    write_atomic(Path(solution), solution_text)


def versions_out_of_sync(source: str | Path, student: str | Path, solution: str | Path) -> list[Path]:
    """Paths whose bytes differ from what ``generate_versions`` would write (missing counts)."""
    stale = []
    for path, text in zip((Path(student), Path(solution)), render_versions(source)):
        if not path.exists() or path.read_bytes() != text.encode("utf-8"):
            stale.append(path)
    return stale
