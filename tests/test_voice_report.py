"""``gradwatch report`` renders episodes (issue 17): one row per episode, numbers for people, an honest trend line,
and runs written before episodes existed still read."""

from __future__ import annotations

import math

import pytest

from gradwatch import Symptom
from gradwatch._episodes import EpisodeTracker
from gradwatch._report import RunData, _take_text, diagnose, flow_data, format_text
from gradwatch._sinks import alerts_markdown, episodes_markdown


def _run(norms: dict[int, float]) -> RunData:
    return RunData("r", "/tmp/r", scalars={"gradwatch/global/grad_norm": norms})


@pytest.mark.parametrize(("norms", "trend"), [
    ({s: 0.3 * 10 ** (-s / 10) for s in range(100)}, "collapsed"),
    ({s: 0.3 * 10 ** (s / 7) for s in range(100)}, "exploded"),
    ({**{s: 0.3 for s in range(90)}, 90: 2.7e14, **{s: math.nan for s in range(91, 100)}}, "went non-finite"),
    ({**{s: 0.3 for s in range(50)}, 50: 1e6, **{s: 0.3 for s in range(51, 100)}}, "exploded"),  # a burst
    ({s: 1.0 + 0.01 * (s % 3) for s in range(100)}, "steady"),
    ({0: 4.0, 10: 1.0}, "falling"),
])
def test_the_trend_line_is_honest(norms, trend):
    g = diagnose(_run(norms))["global_norm"]
    assert g["trend"] == trend
    line = next(x for x in format_text([diagnose(_run(norms))]).splitlines() if "global grad norm" in x)
    assert line.strip().startswith(f"global grad norm: {trend}")
    assert "steady" not in line or trend == "steady"


def test_a_run_that_went_non_finite_says_where():
    norms = {**{s: 0.3 * 2 ** s for s in range(48)}, **{s: math.nan for s in range(48, 60)}}
    g = diagnose(_run(norms))["global_norm"]
    assert (g["first_nonfinite_step"], g["nonfinite"], g["peak_step"]) == (48, 12, 47)
    text = format_text([diagnose(_run(norms))])
    assert "went non-finite at step 48 (12 of the logged values)" in text
    assert "peak 4.22e+13 at step 47" in text


def _episode_run(symptoms_by_step, every=1):
    """A run read from the alert texts an EpisodeTracker's events make (as a TensorBoardSink writes them)."""
    run = RunData("r", "/tmp/r")
    tracker = EpisodeTracker()
    steps = sorted(symptoms_by_step)
    for step in range(steps[0], steps[-1] + 2):
        events = tracker.observe(symptoms_by_step.get(step, []), step).events()
        if events:
            _take_text(run, "gradwatch/alerts", episodes_markdown(events))
        run.scalars.setdefault("gradwatch/global/grad_norm", {})[step] = 1.0
    return run


def test_one_row_per_episode_and_no_long_floats():
    spike = {s: [Symptom("spike", None, s, 1.391e30, 2.0, "warning", "Loss spike.", since=s,
                         evidence=f"Loss spike at step {s}: loss 1.391e+30.")] for s in range(25, 30)}
    nan = {s: [Symptom("nonfinite", f"layer{i}.0", s, math.nan, math.inf, "error", "NaN.", since=s)
               for i in range(1, 5)] for s in range(40, 60)}
    report = diagnose(_episode_run({**spike, **nan}))
    assert [(e["kind"], e["where"], e["onset"], e["last"], e["end"]) for e in report["episodes"]] == [
        ("spike", "model-wide", 25, 29, 30), ("nonfinite", "layer1.0, layer2.0, layer3.0, layer4.0 (4 layers)", 40,
                                             59, 60)]
    text = format_text([report])
    rows = [line for line in text.splitlines() if line.strip().startswith(("spike", "nonfinite"))]
    assert len(rows) == 2
    assert "1.39e+30" in rows[0]
    assert "116120869549538852864" not in text
    assert not any(len(tok) > 12 and tok.replace(".", "").isdigit() for tok in text.split())


def test_runs_written_before_episodes_still_read():
    old = alerts_markdown([Symptom("vanishing", "fc", 12, 1e-9, 1e-8, "warning", "Vanishing.", since=3)])
    run = RunData("r", "/tmp/r", scalars={"gradwatch/symptoms/vanishing": {12: 1.0, 20: 1.0, 30: 0.0}})
    _take_text(run, "gradwatch/alerts", old)
    (e,) = diagnose(run)["episodes"]
    assert (e["kind"], e["layers"], e["onset"], e["detected"], e["last"]) == ("vanishing", ["fc"], 3, 12, 20)


def test_the_flow_figure_flags_the_layers_of_the_episodes_that_hold():
    nan = {s: [Symptom("nonfinite", "b", s, math.nan, math.inf, "error", "NaN.", since=s)] for s in range(5, 8)}
    run = _episode_run(nan)
    for name in ("a", "b"):
        run.scalars[f"gradwatch/grad_norm/{name}"] = {s: 1.0 for s in range(0, 10)}
        run.tag_order.append(f"gradwatch/grad_norm/{name}")
    assert flow_data(run, step=6)["flagged"] == {"b": "nonfinite"}
    assert flow_data(run, step=8)["flagged"] == {}
