"""The small exercise notebook the grading tests share (two coded questions, deletion AUC
and grid pointing score, plus one manual question), so they do not depend on notebook 08.

``build_source()`` is the source notebook; the constants are its solutions and a wrong q2
answer; the helpers read cells by their ``metadata.vit_course.id``.
"""

from __future__ import annotations

import nbformat
import torch

Q1_SOLUTION = """\
    curve = torch.as_tensor(curve, dtype=torch.float64)
    steps = curve.numel() - 1
    return float(((curve[1:] + curve[:-1]) / 2).sum() / steps)"""
Q2_SOLUTION = """\
    m = torch.as_tensor(attribution, dtype=torch.float64)
    positive = m.clamp(min=0)
    total = positive.sum()
    if total == 0:
        return 0.0
    h, w = m.shape[0] // 2, m.shape[1] // 2
    row, col = divmod(target_tile, 2)
    return float(positive[row * h:(row + 1) * h, col * w:(col + 1) * w].sum() / total)"""
Q1_CODE = f'''def deletion_auc(curve):
    """Area under the curve, trapezoid rule, x in [0, 1]."""
    # BEGIN SOLUTION
{Q1_SOLUTION}
    # END SOLUTION'''
Q2_CODE = f'''def grid_pointing_score(attribution, target_tile):
    """Positive attribution in the target tile / total positive attribution."""
    # BEGIN SOLUTION
{Q2_SOLUTION}
    # END SOLUTION'''
MANUAL_ANSWER = "A low deletion AUC means the score collapses once the top tokens are gone."


WRONG_Q2_CODE = '''def grid_pointing_score(attribution, target_tile):
    m = torch.as_tensor(attribution, dtype=torch.float64)
    h, w = m.shape[0] // 2, m.shape[1] // 2
    row, col = divmod(target_tile, 2)
    return float(m[row * h:(row + 1) * h, col * w:(col + 1) * w].sum() / m.sum())'''


def meta(cid: str, kind: str, question: str, points: float | None = None) -> dict:
    """A cell's grading metadata."""
    info = {"id": cid, "kind": kind, "question": question}
    if points is not None:
        info["points"] = points
    return {"vit_course": info}


def build_source() -> nbformat.NotebookNode:
    v4 = nbformat.v4
    cells = [
        v4.new_markdown_cell("# Evaluating explanations (test exercise)"),
        v4.new_code_cell("import torch\nfrom vit_course.grading import check"),
        v4.new_markdown_cell("**Q1.** Implement `deletion_auc`."),
        v4.new_code_cell(Q1_CODE, metadata=meta("q1-code", "solution", "q1")),
        v4.new_code_cell('check("q1", deletion_auc)', metadata=meta("q1-check", "check", "q1")),
        v4.new_code_cell(
            "# HIDDEN TESTS\nfrom vit_course.grading import autograde\nautograde('q1', deletion_auc)",
            metadata=meta("q1-hidden", "hidden_test", "q1", 2),
        ),
        v4.new_markdown_cell("**Q2.** Implement `grid_pointing_score`."),
        v4.new_code_cell(Q2_CODE, metadata=meta("q2-code", "solution", "q2")),
        v4.new_code_cell('check("q2", grid_pointing_score)', metadata=meta("q2-check", "check", "q2")),
        v4.new_code_cell(
            "# HIDDEN TESTS\nfrom vit_course.grading import autograde\nautograde('q2', grid_pointing_score)",
            metadata=meta("q2-hidden", "hidden_test", "q2", 2),
        ),
        v4.new_markdown_cell(
            f"**Q3.** What does a low deletion AUC mean?\n\n<!-- BEGIN SOLUTION -->\n{MANUAL_ANSWER}\n<!-- END SOLUTION -->",
            metadata=meta("q3-answer", "manual", "q3", 1),
        ),
    ]
    nb = v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def cell_code(cell) -> str:
    return "".join(cell.source) if isinstance(cell.source, list) else cell.source


def by_id(nb) -> dict:
    return {c.metadata["vit_course"]["id"]: c for c in nb.cells if "vit_course" in c.metadata}


def outputs_of(nb, cid):
    return by_id(nb)[cid].outputs


def solution_fn(code: str, name: str):
    namespace = {"torch": torch}
    exec(code.replace("    # BEGIN SOLUTION\n", "").replace("\n    # END SOLUTION", ""), namespace)
    return namespace[name]


def body(code: str) -> str:
    """A solution cell's code without its markers (what a student who solved it hands in)."""
    return code.replace("    # BEGIN SOLUTION\n", "").replace("\n    # END SOLUTION", "")


def set_cell(nb, cid: str, source: str) -> None:
    by_id(nb)[cid].source = source


def insert_after(nb, cid: str, source: str) -> None:
    index = nb.cells.index(by_id(nb)[cid])
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source))


def solve(nb, q1: bool = True, q2: bool = True) -> None:
    """Fill in the solutions (and the manual answer) of a student version, in place."""
    if q1:
        set_cell(nb, "q1-code", body(Q1_CODE))
    if q2:
        set_cell(nb, "q2-code", body(Q2_CODE))
    answer = by_id(nb)["q3-answer"]
    answer.source = answer.source.replace("*Write your answer here.*", "The score drops fast.")
