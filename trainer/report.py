"""A training run's report: report.json, report.md and PNG plots.

Every run's report is written to `<logs>/runs/<run id>/` (`assistant.runs.report_dir`, where every face
reads it) and copied into the version it published; the run log is `assistant.runs`'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from assistant import atomic
from assistant.runs import REPORT_JSON, REPORT_MD

LOSS_PNG, HELDOUT_PNG = "training.png", "heldout.png"


# ---- the report ----
def write(out: Path, report: dict[str, Any]) -> None:
    """Write report.json, report.md and the plots into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / REPORT_JSON, json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    plots = []
    if _plot_training(report, out / LOSS_PNG):
        plots.append(LOSS_PNG)
    if _plot_heldout(report, out / HELDOUT_PNG):
        plots.append(HELDOUT_PNG)
    atomic.write_text(out / REPORT_MD, markdown(report, plots))


def markdown(report: dict[str, Any], plots: list[str] = ()) -> str:
    lines = [f"# Training run {report['run_id']}", ""]
    outcome = report.get("outcome", "?")
    if report.get("version"):
        outcome += f": {report['version']} is now served"
    lines += [f"- outcome: **{outcome}**", f"- started: {report.get('started', '?')}"]
    lines += [
        f"- objective: {'+'.join(report.get('objectives', [])) or '-'}",
        f"- trained from: {report.get('parent', '?')} ({report.get('base', '?')})",
        f"- device: {report.get('device', '?')}",
    ]
    if "update_kept" in report:
        lines.append(f"- served as: {report['quant_type']} (keeps {report['update_kept']:.0%} of the update)")
    if report.get("scale"):
        lines.append(f"- merged at {report['scale']:.0%} of the trained update (see the notes)")
    for reason in report.get("reasons", []):
        lines.append(f"- why: {reason}")
    rows = report.get("rows", {})
    if rows:
        lines += ["", "## Feedback rows", "", "| kind | new | this run | replayed | held out |"]
        lines += ["|---|---|---|---|---|"]
        lines += [
            f"| {k} | {v.get('fresh', v['new'])} | {v['new']} | {v['replay']} | {v['holdout']} |"
            for k, v in rows.items()
        ]
        lines += [f"- left out: {line}" for line in report.get("left_out", [])]
    before, after = report.get("before"), report.get("after")
    if before and after:
        lines += [
            "",
            "## Held-out evaluation (served -> candidate)",
            "",
            "| metric | served | candidate |",
            "|---|---|---|",
        ]
        for key, label in _METRICS:
            if before.get(key) is not None or after.get(key) is not None:
                lines.append(f"| {label} | {_fmt(before.get(key))} | {_fmt(after.get(key))} |")
    checks = report.get("checks", [])
    if checks:
        lines += ["", "## Gate", ""]
        lines += [f"- {'pass' if c['passed'] else 'FAIL'}: {c['name']}: {c['detail']}" for c in checks]
    stages = report.get("stages", {})
    if stages:
        lines += ["", "## Stages", "", "| stage | seconds | peak RAM (MiB) |", "|---|---|---|"]
        lines += [f"| {name} | {s['seconds']:.1f} | {s['peak_rss_mib']:.0f} |" for name, s in stages.items()]
    for name, history in report.get("training", {}).items():
        for counts in (h["rows"] for h in history if "rows" in h):
            left = "".join(f"; {n} left out: {why}" for why, n in counts["left_out"].items())
            lines += [
                "",
                f"Rows ({name}): {counts['given']} given, {counts['trained']} trained, {counts['fitted']} "
                f"shortened to fit (sources first, then old turns){left}",
            ]
        steps = [h for h in history if "loss" in h]
        if steps:
            lines += [
                "",
                f"Training ({name}): {len(steps)} steps, loss {steps[0]['loss']:.4f} -> "
                f"{steps[-1]['loss']:.4f}",
            ]
    if report.get("raft"):
        lines += ["", f"RAFT: {json.dumps(report['raft'])}"]
    for note in report.get("notes", []):
        lines.append(f"- note: {note}")
    if plots:
        lines += [""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


_METRICS = [
    ("dpo_accuracy", "preference accuracy"),
    ("dpo_margin", "reward margin (log-prob/token)"),
    ("kto_desirability", "thumbs desirability"),
    ("sft_logprob", "answers log-prob/token"),
    ("perplexity", "reference perplexity"),
    ("general_answered", "general questions answered"),
]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_training(report: dict[str, Any], path: Path) -> bool:
    """Training loss and reward margins (where the objective logs them) over steps, one line per objective."""
    series = {
        name: [h for h in history if "loss" in h] for name, history in report.get("training", {}).items()
    }
    series = {name: steps for name, steps in series.items() if steps}
    if not series:
        return False
    plt = _pyplot()
    fig, (loss_ax, margin_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name, steps in series.items():
        loss_ax.plot([h["step"] for h in steps], [h["loss"] for h in steps], label=name)
        margins = [h for h in steps if "rewards/margins" in h]
        if margins:
            margin_ax.plot([h["step"] for h in margins], [h["rewards/margins"] for h in margins], label=name)
    loss_ax.set(title="training loss", xlabel="step")
    margin_ax.set(title="reward margin (chosen - rejected)", xlabel="step")
    loss_ax.legend()
    if margin_ax.lines:
        margin_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def _plot_heldout(report: dict[str, Any], path: Path) -> bool:
    """Held-out metrics of the served model and the candidate, side by side."""
    before, after = report.get("before"), report.get("after")
    if not before or not after:
        return False
    both = [(k, label) for k, label in _METRICS[:4] if None not in (before.get(k), after.get(k))]
    shown = [(label, before[k], after[k]) for k, label in both]  # (a rejected update may lack held-out rows)
    shown.append(("perplexity / 10", before["perplexity"] / 10, after["perplexity"] / 10))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(len(shown))
    ax.bar([x - 0.2 for x in xs], [b for _, b, _ in shown], width=0.4, label="served")
    ax.bar([x + 0.2 for x in xs], [a for _, _, a in shown], width=0.4, label="candidate")
    ax.set_xticks(list(xs), [label for label, _, _ in shown], rotation=15, fontsize=8)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_title("held-out evaluation")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True
