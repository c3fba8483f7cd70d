"""Task pages plot committed records of real runs, and those records are the README's numbers."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "docs" / "hooks"))
from result_plots import MARKER, figures, records, render, results_markdown  # noqa: E402

DOCS = REPO / "docs"
README = (REPO / "README.md").read_text()
PNG = b"\x89PNG\r\n\x1a\n"
# README row label → the metric a record names it by
TWIN_ROWS = {
    "ROC-AUC twin-like vs unrelated": "auc_twin_vs_unrelated",
    "ROC-AUC same-sex twin-like vs unrelated of the same sex and age": "auc_twin_vs_matched",
    "ROC-AUC MZ vs unrelated (hidden)": "auc_mz_vs_unrelated",
    "ROC-AUC DZ vs unrelated (hidden)": "auc_dz_vs_unrelated",
    "ROC-AUC sibling vs unrelated": "auc_sibling_vs_unrelated",
    "ROC-AUC siblings vs unrelated": "auc_sibling_vs_unrelated",
    "co-twin retrieval top-1": "top1",
    "co-twin retrieval top-5": "top5",
}


def _quoted(section: str) -> dict[str, tuple[str, str]]:
    """Metric → (model, baseline) cells, as printed, of the README table in `section`."""
    start = README.index("| metric", README.index(section))
    table = README[start : README.index("\n\n", start)]
    rows = {}
    for line in table.splitlines()[2:]:
        label, model, baseline = (c.strip(" *") for c in line.strip("|").split("|")[:3])
        rows[TWIN_ROWS[label]] = (model, baseline)
    return rows


def _printed(record: dict[str, Any], scorer: str, metric: str) -> str:
    mean, std = record["aggregate"][scorer][metric]
    return f"{mean:.3f} ± {std:.3f}"


@pytest.mark.parametrize(
    ("name", "section"),
    [
        ("twins", "## Results on real QTIM"),
        ("twins-functional", "The default 60-family cohort"),
    ],
)
def test_twins_records_are_the_runs_the_readme_quotes(name: str, section: str) -> None:
    record = records(DOCS)[name]
    quoted = _quoted(section)
    assert len(quoted) >= 4
    for metric, (model, baseline) in quoted.items():
        assert _printed(record, "model", metric) == model, metric
        assert _printed(record, "baseline", metric) == baseline, metric
    assert len(record["folds"]) == 5 and record["config"]["seed"] == 42


def test_image_record_is_the_run_the_readme_quotes() -> None:
    record = records(DOCS)["image-rice"]
    rows = [line for line in README.splitlines() if line.startswith("| `image_rice` |")]
    row = rows[-1]  # the results table comes after the datasets table
    cells = [c.strip() for c in row.strip("|").split("|")]
    for scorer, cell in zip(("model", "baseline"), cells[2:4], strict=True):
        printed = " / ".join(
            f"{record['aggregate'][scorer][m][0]:.3f}" for m in ("accuracy", "macro_f1", "ece")
        )
        assert printed == cell, scorer
    split = re.search(r"\((\d+) / (\d+) / (\d+)\)", cells[1])
    assert split is not None and record["folds"][0]["n_test"] == int(split[3])


def test_segmentation_record_is_the_run_the_readme_quotes() -> None:
    record = records(DOCS)["segmentation-bcss"]
    section = README.split("## Histology segmentation (BCSS)")[1].split("\n## ")[0]
    model, baseline = (record["aggregate"][s] for s in ("model", "baseline"))
    quoted = (
        f"mean Dice {model['mean_dice'][0]:.3f} (IoU {model['mean_iou'][0]:.3f}, pixel "
        f"accuracy {model['pixel_accuracy'][0]:.3f}) against the colour baseline's\n"
        f"{baseline['mean_dice'][0]:.3f} ({baseline['mean_iou'][0]:.3f}, "
        f"{baseline['pixel_accuracy'][0]:.3f})"
    )
    assert quoted in section
    assert f"{record['data']['tiles']} tiles with masks from {record['data']['groups']} slides" in (
        " ".join(section.split())
    )


def test_node_record_is_the_run_the_readme_quotes() -> None:
    record = records(DOCS)["node-wikics"]
    section = " ".join(
        README.split("## Node classification (Wiki-CS)")[1].split("\n## ")[0].split()
    )
    model, baseline = (record["aggregate"][s] for s in ("model", "baseline"))
    quoted = (
        f"accuracy {model['accuracy'][0]:.3f} ± {model['accuracy'][1]:.3f} and macro-F1 "
        f"{model['macro_f1'][0]:.3f} ± {model['macro_f1'][1]:.3f} against label propagation's "
        f"{baseline['accuracy'][0]:.3f} ± {baseline['accuracy'][1]:.3f} and "
        f"{baseline['macro_f1'][0]:.3f} ± {baseline['macro_f1'][1]:.3f}"
    )
    assert quoted in section
    assert len(record["folds"]) == 5


def test_every_record_is_shown_on_a_page_and_every_marker_has_a_record() -> None:
    shown = {m for page in DOCS.rglob("*.md") for m in MARKER.findall(page.read_text())}
    assert shown == set(records(DOCS))
    assert {"twins", "twins-functional", "image-rice", "segmentation-bcss", "node-wikics"} <= shown


def test_each_record_draws_its_task_plots_and_a_fold_table() -> None:
    expected = {
        "twins": {"folds", "roc", "retrieval", "similarity"},
        "twins-functional": {"folds", "roc", "retrieval", "similarity"},
        "image-rice": {"folds", "reliability", "confusion", "recall"},
        "segmentation-bcss": {"folds", "confusion", "dice"},
        "node-wikics": {"folds", "reliability", "confusion", "recall"},
    }
    for name, record in records(DOCS).items():
        plots = figures(record)
        assert set(plots) == expected[name], name
        for _, draw in plots.values():
            png = render(draw(record))
            assert png.startswith(PNG) and len(png) > 5000
        page = results_markdown(name, record, "tasks/x.md")
        assert f"](../results/{name}/folds.png)" in page
        first = record["folds"][0]["model"][record["primary_metric"]]
        assert f"| {first:.3f} |" in page  # the per-fold numbers are printed, not only drawn
