"""The experiments widget in an exported page: runs by version, status, diff, text only."""

from __future__ import annotations

import numpy as np

import circuitboard as cb
from circuitboard.experiments import Store
from tests.conftest import open_report


def test_runs_versions_diff_and_hostile_text(page, tmp_path, artifacts) -> None:
    project = tmp_path / "log"
    cb.log(
        "scan",
        {"best": 3},
        params={"layer": "<img src=x onerror=window.__pwned=1>"},
        source="def scan(x):\n    return x + 1\n",
        project=project,
    )
    cb.log(
        "scan",
        {"scores": np.arange(3.0)},
        source="def scan(x):\n    return x + 2\n",
        project=project,
    )
    cb.log("other", 1, project=project)
    runs = Store(project).runs("scan")
    view = cb.ExperimentsView(project)
    view.selected_run = runs[1].run_id
    path = cb.report(view, path=tmp_path / "exp.html", title="experiments")
    open_report(page, path)
    names = page.eval_on_selector_all(".cb-exp-group", "gs => gs.map(g => g.dataset.name)")
    assert names == ["other", "scan"]
    rows = page.eval_on_selector_all(
        '.cb-exp-group[data-name="scan"] .cb-exp-run', "rs => rs.map(r => r.innerText)"
    )
    assert rows[0].startswith("v2") and rows[1].startswith("v1")  # newest first
    assert all("complete" in r for r in rows)
    diff = page.eval_on_selector_all(
        ".cb-exp-diff .cb-exp-line", "ls => ls.map(l => [l.className, l.textContent])"
    )
    assert ["cb-exp-line cb-exp-del", "-    return x + 1"] in diff
    assert ["cb-exp-line cb-exp-add", "+    return x + 2"] in diff
    assert "array [3]" in page.inner_text(".cb-exp-results")
    page.click(f'.cb-exp-run[data-run="{runs[0].run_id}"]')
    page.wait_for_selector(f'.cb-exp-run.cb-exp-selected[data-run="{runs[0].run_id}"]')
    assert "<img src=x" in page.inner_text(".cb-exp-detail")  # arguments shown as text
    assert page.evaluate("() => window.__pwned") is None
    assert page.query_selector(".cb-exp img") is None
    page.screenshot(path=str(artifacts / "experiments.png"), full_page=True)
    assert page.cb_errors == []
