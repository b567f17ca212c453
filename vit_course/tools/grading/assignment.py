"""What the grader reads from the source notebook: questions, points, graded cells, hidden tests.

``load_assignment(source)`` turns the source notebook (see ``markers``) into an
``Assignment``: one ``QuestionSpec`` per CSV column, the ids of the graded cells a
submission must keep (in order), the hidden-test cells the executor appends, and the
student-version source of each graded cell (to spot answers left as the template).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vit_course.tools.grading.markers import CellInfo, cell_info, graded_cells, make_versions, read_notebook


@dataclass
class QuestionSpec:
    """A CSV column: a question with automatic (hidden-test) or manual points."""

    qid: str
    kind: str  # "auto" | "manual"
    points: float
    hidden: list[CellInfo] = field(default_factory=list)


@dataclass
class Assignment:
    """What the grader needs from the source notebook."""

    source: Path
    questions: list[QuestionSpec]
    expected_ids: list[str]  # graded cells a submission must keep, in order
    hidden_cells: list[dict]  # {"id", "source"} for the executor
    template: dict[str, str]  # student-version source of each graded cell, by id
    cells: dict[str, CellInfo] = field(default_factory=dict)  # every graded cell, by id

    @property
    def max_total(self) -> float:
        return sum(q.points for q in self.questions)


def load_assignment(source: str | Path) -> Assignment:
    """Read the source notebook and collect questions, graded-cell ids and hidden tests.

    Raises:
        ValueError: when the source is not a valid notebook or its grading metadata is wrong.
    """
    source = Path(source)
    nb = read_notebook(source)
    infos = graded_cells(nb)
    student, _ = make_versions(nb, source.name)
    questions: dict[str, QuestionSpec] = {}
    hidden_cells = []
    by_id = {cell_info(c).id: c for c in nb.cells if cell_info(c) is not None}
    for info in infos:
        if info.kind in ("hidden_test", "manual"):
            kind = "auto" if info.kind == "hidden_test" else "manual"
            spec = questions.setdefault(info.question, QuestionSpec(info.question, kind, 0.0))
            spec.points += info.points
            if info.kind == "hidden_test":
                spec.hidden.append(info)
                hidden_cells.append({"id": info.id, "source": cell_text(by_id[info.id])})
    template = {}
    for cell in student["cells"]:
        info = cell_info(cell)
        if info is not None:
            template[info.id] = cell_text(cell)
    return Assignment(
        source=source,
        questions=list(questions.values()),
        expected_ids=[i.id for i in infos if i.kind != "hidden_test"],
        hidden_cells=hidden_cells,
        template=template,
        cells={i.id: i for i in infos},
    )


def cell_text(cell: dict) -> str:
    """A cell's source as one string (nbformat allows a list of lines)."""
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)
