"""Notebook views: the summary and the report as HTML tables, and ``Watcher.plot()``'s inline figure.

Known numbers: a NaN injected at a known layer and step must appear in that row of the HTML table; hand-set gradients
must give bars of known heights; user-controlled text (layer and run names) must arrive escaped.
"""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser
from typing import Any

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._notebook import Report, Summary, report

pytestmark = pytest.mark.filterwarnings("ignore::gradwatch.GradWatchWarning")

NAN_STEP = 3


class Tables(HTMLParser):
    """The rows of every table (cell texts), and the text outside tables."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def rows_of(html: str) -> list[dict[str, str]]:
    parser = Tables()
    parser.feed(html)
    header, *body = parser.rows
    return [dict(zip(header, row, strict=False)) for row in body]


def model_with(middle: str = "hidden") -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("inp", nn.Linear(3, 4))
    model.add_module(middle, nn.Linear(4, 4))
    model.add_module("out", nn.Linear(4, 1))
    return model


def run(model: nn.Module, steps: int, nan_layer: str | None, **options: Any) -> gradwatch.Watcher:
    watcher = gradwatch.watch(model, every_n_steps=1, **options)
    for step in range(steps):
        model.zero_grad()
        model(torch.randn(8, 3)).pow(2).mean().backward()
        if step == NAN_STEP and nan_layer is not None:
            model.get_submodule(nan_layer).weight.grad[0, 0] = float("nan")
        watcher.step()
    return watcher


def test_summary_is_the_same_text_and_an_html_table_naming_the_nan_layer_and_step() -> None:
    watcher = run(model_with(), 6, "hidden")
    summary = watcher.summary()
    assert isinstance(summary, str)
    assert isinstance(summary, Summary)
    assert summary == watcher.history.format()  # the text, unchanged
    rows = rows_of(summary._repr_html_())
    (nan_row,) = [r for r in rows if r.get("kind") == "nonfinite"]
    assert nan_row["layers"] == "hidden"
    assert nan_row["since"] == str(NAN_STEP)
    assert nan_row["detected"] == str(NAN_STEP)
    watcher.close()


def test_summary_html_without_symptoms_and_with_a_clipper() -> None:
    model = model_with()
    watcher = run(model, 2, None, clip=1e-6)  # every step clipped
    summary = watcher.summary()
    assert summary.clipping is not None
    assert summary.clipping in summary
    html = summary._repr_html_()
    assert "no symptoms" in html
    assert summary.clipping.split()[0] in html
    watcher.close()


def test_layer_names_are_escaped_in_the_summary_html() -> None:
    name = "<img src=x onerror=alert(1)>"
    watcher = run(model_with(name), 5, name)
    html = watcher.summary()._repr_html_()
    assert name not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    (nan_row,) = [r for r in rows_of(html) if r.get("kind") == "nonfinite"]
    assert nan_row["layers"] == name  # the parsed (unescaped) cell is the name itself
    watcher.close()


def test_plot_draws_one_pair_of_bars_per_layer_at_the_hand_set_values() -> None:
    pytest.importorskip("matplotlib")
    model = model_with()
    watcher = gradwatch.watch(model, every_n_steps=1)
    for i, layer in enumerate(("inp", "hidden", "out")):  # every entry 10**-i: RMS and max |g| both 10**-i
        for p in model.get_submodule(layer).parameters():
            p.grad = torch.full_like(p, 10.0 ** -i)
    watcher.step()
    fig = watcher.plot()
    from matplotlib.figure import Figure

    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    tops = [p.get_y() + p.get_height() for p in ax.patches]
    assert tops == pytest.approx([1.0, 0.1, 0.01, 1.0, 0.1, 0.01], rel=1e-6)  # RMS bars, then max |g| bars
    assert [t.get_text() for t in ax.get_xticklabels()] == ["inp", "hidden", "out"]
    assert "step 0" in ax.get_title()
    watcher.close()


def test_plot_marks_the_nan_layer_of_the_last_logged_step() -> None:
    pytest.importorskip("matplotlib")
    watcher = run(model_with(), NAN_STEP + 1, "hidden")  # the NaN step is the last one
    ax = watcher.plot().axes[0]
    colors = {t.get_text(): t.get_color() for t in ax.get_xticklabels()}
    assert colors["hidden"] == "#000000"  # non-finite: black label and marker
    assert colors["inp"] != "#000000"
    assert f"step {NAN_STEP}" in ax.get_title()
    watcher.close()


def test_plot_before_any_logged_step_says_so() -> None:
    watcher = gradwatch.watch(model_with())
    with pytest.raises(gradwatch.GradWatchError, match="Nothing to plot yet"):
        watcher.plot()
    watcher.close()


def test_report_of_a_log_dir_prints_the_text_and_shows_the_nan_in_a_table(tmp_path: Any) -> None:
    log_dir = tmp_path / "run<1>"
    watcher = run(model_with(), 6, "hidden", log_dir=str(log_dir))
    watcher.close()
    r = report(str(tmp_path))
    assert isinstance(r, Report)
    (only,) = r.runs
    assert [e["onset"] for e in only["episodes"] if e["kind"] == "nonfinite"] == [NAN_STEP]
    from gradwatch._report import format_text

    assert str(r) == format_text(r.runs)  # what `gradwatch report` prints without rich
    assert json.loads(r.to_json())["runs"] == json.loads(json.dumps(r.runs))
    html = r._repr_html_()
    assert "run<1>" not in html
    assert "run&lt;1&gt;" in html
    (nan_row,) = [row for row in rows_of(html) if row.get("kind") == "nonfinite"]
    assert (nan_row["layers"], nan_row["since"]) == ("hidden", str(NAN_STEP))


def test_report_of_a_directory_without_runs_raises_a_clear_error(tmp_path: Any) -> None:
    with pytest.raises(gradwatch.GradWatchError, match="event file"):
        report(str(tmp_path))
    watcher = run(model_with(), 1, None, log_dir=os.path.join(tmp_path, "a"))
    watcher.close()
    with pytest.raises(gradwatch.GradWatchError, match="No run named 'b'"):
        report(str(tmp_path), run="b")
