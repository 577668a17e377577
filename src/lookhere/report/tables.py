"""Tables printed by the commands: scores per task (`lookhere eval`) and REC per method
(`lookhere eval rec`, `lookhere pretrain eval`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lookhere.tables import pct

if TYPE_CHECKING:  # the commands import this module for --help: no torch at import
    from lookhere.eval.rec import RecResult
    from lookhere.eval.scoring import TaskScore


def format_table(tasks: dict[str, TaskScore]) -> str:
    """One line per task: n, accuracy with its 95% CI, parse failures, mean IoU (box tasks)."""
    lines = [f"{'task':<18} {'n':>6}  {'accuracy':>8}  {'95% CI':<16}  {'parse fail':>10}  "
             f"{'mean IoU':>8}"]
    for task, t in tasks.items():
        lo, hi = t.ci95
        iou = "-" if t.mean_iou is None else f"{t.mean_iou:.3f}"
        lines.append(f"{task:<18} {t.n:>6}  {t.accuracy:>8.3f}  "
                     f"{f'[{lo:.3f}, {hi:.3f}]':<16}  {t.parse_failure_rate:>10.1%}  {iou:>8}")
    return "\n".join(lines)


def rec_table(result: RecResult) -> str:
    """A markdown table of `evaluate_rec`'s result: one row per method, percentages."""
    rows = ["| method | n | Acc@0.5 | mean IoU | pointing | cIoU | mIoU | parse fail |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in result.methods.items():
        cells = [name, str(m.n), pct(m.acc_at_iou), pct(m.mean_iou), pct(m.pointing),
                 pct(m.ciou), pct(m.miou), pct(m.parse_failure_rate)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
