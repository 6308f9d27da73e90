"""The TensorBoard output of a fixed run is unchanged: the same tags, at the same steps, with the same values.

``fixed_runs(root)`` trains a few small deterministic models under ``gradwatch.watch(model, log_dir=...)`` with a
broad set of options (every-step and every-third-step scalars, norm and adaptive clipping, AGC over a sparse
embedding, a NaN planted in one layer at one step, a x1000 gradient jump, a vanishing deep sigmoid stack, activations,
gradient and parameter histograms, the gradient-flow figure, the loss) and ``read_runs(root)`` reads the event files
back with TensorBoard's ``EventAccumulator``. The golden file ``tests/data/tags_golden.json`` holds what the code
wrote before the issue-15 refactor (commit 430af96). Only public API that exists on both sides is used.

Regenerate it (only when a change of the event files is intended, and say so in the changelog)::

    python tests/test_tags_unchanged.py --write

The comparison: the same runs, the same tags in each category, the same steps per tag; scalars and histogram
numbers equal to float32 precision (relative 1e-6; NaN matches NaN); histogram bucket counts, image sizes and text
equal. An alert text may gain a machine-readable record after its markdown (``\\n\\n<!-- gradwatch-records ...``):
that suffix is cut off before comparing, the visible markdown must be the same.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch.clipping import AGC, ZScoreClip

GOLDEN = Path(__file__).resolve().parent / "data" / "tags_golden.json"
RECORDS_MARKER = "\n\n<!-- gradwatch-records"
REL = 1e-6


# ---------------------------------------------------------------------------------------------------------------------
# The fixed run
# ---------------------------------------------------------------------------------------------------------------------


def _batch(seed: int, step: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed * 1000 + step))


def _dense_run(log_dir: Path) -> None:
    """Every step: global clip 1.0, a saturated Tanh, activations, histograms of grads and params, the figure, the
    loss, and a NaN planted in layer '2' at step 9 (on_nonfinite='warn'; the loop skips that optimizer step)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
    with torch.no_grad():
        model[0].weight.mul_(8.0)  # the Tanh saturates (saturated)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    thresholds = gradwatch.Thresholds(vanishing_patience=3, activation_patience=2, spike_warmup=5, jump_warmup=3)
    with gradwatch.watch(model, log_dir=log_dir, every_n_steps=1, clip=1.0, on_nonfinite="warn",
                         thresholds=thresholds, activations=True, histogram_every_n_steps=4,
                         histograms=("grad", "param"), figure_every_n_steps=6) as watcher:
        for step in range(12):
            opt.zero_grad(set_to_none=True)
            x = _batch(1, step, (16, 4))
            loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
            loss.backward()
            if step == 9:
                model[2].weight.grad[3, 5] = float("nan")
            watcher.step(loss=loss)
            if step != 9:
                opt.step()


def _sparse_run(log_dir: Path) -> None:
    """Every third step: a 9-layer sigmoid stack whose early layers starve (vanishing, saturated), ZScoreClip, a
    x1000 jump of every gradient at step 20 (exploding, spike with on_spike='warn'), activations every second step,
    gradient histograms every sixth step, the loss as a float."""
    torch.manual_seed(1)
    layers: list[nn.Module] = [nn.Linear(2, 6), nn.Sigmoid()]
    for _ in range(7):
        layers += [nn.Linear(6, 6), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(6, 1))
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(4.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    thresholds = gradwatch.Thresholds(vanishing_patience=4, activation_patience=2, spike_warmup=8, jump_warmup=5)
    with gradwatch.watch(model, log_dir=log_dir, every_n_steps=3, clip=ZScoreClip(warmup_steps=5),
                         thresholds=thresholds, on_spike="warn", activations=True, activation_every_n_steps=2,
                         histogram_every_n_steps=6) as watcher:
        for step in range(24):
            opt.zero_grad(set_to_none=True)
            x = _batch(2, step, (8, 2))
            loss = (model(x) - (x[:, :1] * x[:, 1:])).pow(2).mean()
            loss.backward()
            if step == 20:
                for p in model.parameters():
                    p.grad.mul_(1000.0)
            watcher.step(loss=float(loss))
            opt.step()


def _jump_run(log_dir: Path) -> None:
    """Every second step, no clipper: a x1000 jump of every gradient at step 14 (exploding, spike), ReLU units kept
    dead by a large negative bias (dead), activations on the sampled steps, the loss."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        model[0].bias[:6] = -20.0
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    thresholds = gradwatch.Thresholds(activation_patience=2, spike_warmup=6, jump_warmup=4)
    with gradwatch.watch(model, log_dir=log_dir, every_n_steps=2, thresholds=thresholds, on_spike="warn",
                         activations=True) as watcher:
        for step in range(18):
            opt.zero_grad(set_to_none=True)
            x = _batch(4, step, (16, 3))
            loss = (model(x) - x[:, :1]).pow(2).mean()
            loss.backward()
            if step == 14:
                for p in model.parameters():
                    if p.grad is not None:
                        p.grad.mul_(1000.0)
            watcher.step(loss=loss)
            if step != 14:
                opt.step()


class _Bag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8, sparse=True)
        self.body = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.LayerNorm(8))
        self.head = nn.Linear(8, 3)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.embed(idx).mean(dim=1)))


def _agc_run(log_dir: Path) -> None:
    """Every second step: a sparse embedding gradient, AGC over the watched layers, a subset of layers by glob,
    an Inf planted in the head's bias at step 5 (on_nonfinite='ignore', the optimizer step skipped there)."""
    torch.manual_seed(2)
    model = _Bag()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradwatch.watch(model, log_dir=log_dir, every_n_steps=2, clip=AGC(0.05), on_nonfinite="ignore",
                         layers=["embed", "body.*", "head"], histogram_every_n_steps=3) as watcher:
        for step in range(8):
            opt.zero_grad(set_to_none=True)
            g = torch.Generator().manual_seed(3000 + step)
            idx = torch.randint(0, 20, (6, 5), generator=g)
            y = torch.randint(0, 3, (6,), generator=g)
            loss = nn.functional.cross_entropy(model(idx), y)
            loss.backward()
            if step == 5:
                model.head.bias.grad[1] = float("inf")
            watcher.step(loss=loss)
            if step != 5:
                opt.step()


RUNS = {"dense": _dense_run, "sparse": _sparse_run, "jump": _jump_run, "agc": _agc_run}


def fixed_runs(root: Path) -> None:
    """Write each fixed run's event files under ``root/<run>`` (single-threaded: the same sums on any machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the planted failures warn, by design
            for name, run in RUNS.items():
                run(root / name)
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------------------------
# Reading the event files back
# ---------------------------------------------------------------------------------------------------------------------


def _visible_text(text: str) -> str:
    return text.split(RECORDS_MARKER, 1)[0]


def read_run(log_dir: Path) -> dict[str, Any]:
    """{category: {tag: [[step, ...], ...]}} for one run's event files, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0, "histograms": 0, "images": 0,
                                                        "compressedHistograms": 0, "audio": 0})
    acc.Reload()
    tags = acc.Tags()
    out: dict[str, Any] = {"scalars": {}, "text": {}, "tensors": {}, "histograms": {}, "images": {}}
    for tag in tags["scalars"]:
        out["scalars"][tag] = [[e.step, e.value] for e in acc.Scalars(tag)]
    for tag in tags["tensors"]:
        plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
        events = acc.Tensors(tag)
        if plugin == "text":
            out["text"][tag] = [[e.step, [_visible_text(s.decode()) for s in e.tensor_proto.string_val]]
                                for e in events]
        else:  # the custom-scalars layout: its serialized config, as text
            out["tensors"][tag] = [[e.step, plugin, _tensor_repr(tensor_util.make_ndarray(e.tensor_proto), plugin)]
                                   for e in events]
    for tag in tags["histograms"]:
        out["histograms"][tag] = [
            [e.step, {"min": h.min, "max": h.max, "num": h.num, "sum": h.sum, "sum_squares": h.sum_squares,
                      "bucket_limit": list(h.bucket_limit), "bucket": list(h.bucket)}]
            for e in acc.Histograms(tag) for h in [e.histogram_value]]
    for tag in tags["images"]:
        out["images"][tag] = [[e.step, e.width, e.height] for e in acc.Images(tag)]
    return out


def _tensor_repr(array: Any, plugin: str) -> Any:
    if plugin == "custom_scalars":
        from google.protobuf import text_format
        from tensorboard.plugins.custom_scalar import layout_pb2

        layout = layout_pb2.Layout()
        layout.ParseFromString(array.item() if array.shape == () else array.tobytes())
        return text_format.MessageToString(layout)
    if array.dtype.kind in "SO":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in array.ravel().tolist()]
    return array.tolist()


def read_runs(root: Path) -> dict[str, Any]:
    return {name: read_run(root / name) for name in RUNS}


def generate(root: Path) -> dict[str, Any]:
    fixed_runs(root)
    return {"runs": read_runs(root)}


# ---------------------------------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------------------------------


def _close(a: float, b: float, scale: float = 0.0) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= REL * max(abs(a), abs(b), scale)


def compare(expected: dict[str, Any], actual: dict[str, Any], limit: int = 40) -> list[str]:
    """The differences between two ``generate`` results, one line per tag (the first ``limit`` of them)."""
    diffs: list[str] = []
    if set(expected["runs"]) != set(actual["runs"]):
        return [f"runs differ: expected {sorted(expected['runs'])}, got {sorted(actual['runs'])}"]
    for run in sorted(expected["runs"]):
        exp_run, act_run = expected["runs"][run], actual["runs"][run]
        for category in sorted(set(exp_run) | set(act_run)):
            exp, act = exp_run.get(category, {}), act_run.get(category, {})
            if missing := sorted(set(exp) - set(act)):
                diffs.append(f"{run}: {category} tags gone: {missing}")
            if extra := sorted(set(act) - set(exp)):
                diffs.append(f"{run}: {category} tags added: {extra}")
            for tag in sorted(set(exp) & set(act)):
                e_steps, a_steps = [x[0] for x in exp[tag]], [x[0] for x in act[tag]]
                if e_steps != a_steps:
                    diffs.append(f"{run}: {category} {tag}: steps {a_steps}, expected {e_steps}")
                    continue
                bad = [(e[0], d) for e, a in zip(exp[tag], act[tag], strict=True)
                       for d in _compare_values(category, e[1:], a[1:])]
                if bad:
                    step, first = bad[0]
                    diffs.append(f"{run}: {category} {tag}: {len({s for s, _ in bad})} of {len(e_steps)} steps differ;"
                                 f" first at step {step}: {first}")
    return diffs[:limit] + ([f"... and {len(diffs) - limit} more"] if len(diffs) > limit else [])


def _compare_values(category: str, exp: list[Any], act: list[Any]) -> list[str]:
    if category == "scalars":
        return [] if _close(exp[0], act[0]) else [f"{act[0]!r}, expected {exp[0]!r}"]
    if category == "histograms":
        e, a = exp[0], act[0]
        out = []
        if e["bucket"] != a["bucket"]:
            out.append(f"bucket counts {a['bucket']}, expected {e['bucket']}")
        if len(e["bucket_limit"]) != len(a["bucket_limit"]) or not all(
                _close(x, y) for x, y in zip(e["bucket_limit"], a["bucket_limit"], strict=True)):
            out.append(f"bucket limits {a['bucket_limit']}, expected {e['bucket_limit']}")
        # the sum may cancel to about zero: its scale is the largest it could be, sqrt(num * sum_squares)
        scale = math.sqrt(max(e["num"] * e["sum_squares"], 0.0)) if not math.isnan(e["sum_squares"]) else 0.0
        for key in ("min", "max", "num", "sum", "sum_squares"):
            if not _close(e[key], a[key], scale if key == "sum" else 0.0):
                out.append(f"{key} {a[key]!r}, expected {e[key]!r}")
        return out
    if len(exp) == 1 and len(act) == 1:
        exp, act = exp[0], act[0]
    return [] if exp == act else [f"{act!r}, expected {exp!r}"]


# ---------------------------------------------------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.is_file():
        pytest.fail(f"{GOLDEN} is missing: run `python tests/test_tags_unchanged.py --write` on the reference code")
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def current(tmp_path_factory):
    pytest.importorskip("matplotlib", reason="the fixed run draws the gradient-flow figure (the plot extra)")
    return json.loads(json.dumps(generate(tmp_path_factory.mktemp("fixed_runs"))))  # the golden file's types


def _alerts(run: dict[str, Any]) -> str:
    return "\n".join(t for _, texts in run["text"]["gradwatch/alerts"] for t in texts)


def _steps(run: dict[str, Any], tag: str) -> list[int]:
    return [s for s, _ in run["scalars"][tag]]


def test_the_golden_file_covers_the_features(golden):
    # the fixed run exercises what it claims: a golden file without these would compare little
    runs = golden["runs"]
    dense, sparse, jump, agc = (runs[r] for r in ("dense", "sparse", "jump", "agc"))
    assert _steps(dense, "gradwatch/global/grad_norm") == list(range(12))
    assert _steps(sparse, "gradwatch/global/grad_norm") == list(range(0, 24, 3))
    assert _steps(jump, "gradwatch/global/grad_norm") == list(range(0, 18, 2))
    assert _steps(agc, "gradwatch/global/grad_norm") == [0, 2, 4, 6]
    assert _steps(dense, "gradwatch/loss") == list(range(12))
    assert math.isnan(dict(dense["scalars"]["gradwatch/global/grad_norm"])[9])  # the planted NaN
    for run, kinds in {"dense": ("nonfinite", "saturated"), "sparse": ("vanishing", "spike"),
                       "jump": ("exploding", "dead"), "agc": ("nonfinite",)}.items():
        for kind in kinds:
            assert f"**{kind}**" in _alerts(runs[run]), (run, kind)
    assert "NaN in the gradients of layer '2' at step 9" in _alerts(dense)
    assert "Inf in the gradients of layer 'head' at step 5" in _alerts(agc)
    assert [s for s, _ in dense["histograms"]["gradwatch/param_hist/2"]] == [0, 4, 8]
    assert [s for s, _ in sparse["histograms"]["gradwatch/grad_hist/0"]] == [0, 6, 12, 18]
    assert [s for s, *_ in dense["images"]["gradwatch/flow"]] == [0, 6]
    assert "gradwatch/act_saturated_frac/1" in dense["scalars"]
    assert "gradwatch/act_dead_frac/1" in jump["scalars"]
    assert "gradwatch/grad_norm/embed" in agc["scalars"]  # a sparse gradient
    assert "gradwatch/clip/active_frac" in agc["scalars"]  # AGC
    assert "gradwatch/clip/threshold" in sparse["scalars"]  # ZScoreClip
    assert [s for s, _ in dense["text"]["gradwatch/layers"]] == [0]
    assert list(dense["tensors"]) == ["custom_scalars__config__"]


def test_tags_steps_and_values_are_unchanged(golden, current):
    diffs = compare(golden, current)
    assert not diffs, "the fixed run's event files differ from tests/data/tags_golden.json:\n  " + "\n  ".join(diffs)


def test_the_comparison_reports_each_kind_of_difference(golden):
    changed = json.loads(json.dumps(golden))
    dense = changed["runs"]["dense"]["scalars"]
    before = golden["runs"]["dense"]["scalars"]["gradwatch/global/grad_norm"][3][1]
    dense["gradwatch/global/grad_norm"][3][1] = before * (1 + 1e-5)       # beyond float32 precision: reported
    dense["gradwatch/global/grad_norm"][4][1] *= 1 + 1e-7                 # within it: not reported
    dense["gradwatch/global/grad_norm"][5][1] = float("nan")              # a number that became NaN: counted
    del dense["gradwatch/loss"][5]
    dense["gradwatch/renamed"] = dense.pop("gradwatch/clip/coef")
    hist = changed["runs"]["dense"]["histograms"]["gradwatch/grad_hist/0"][0][1]
    hist["bucket"][0] += 1
    changed["runs"]["agc"]["text"]["gradwatch/alerts"][0][1][0] += " (reworded)"
    changed["runs"]["jump"]["images"]["gradwatch/flow"] = [[0, 480, 336]]
    expected_bucket = golden["runs"]["dense"]["histograms"]["gradwatch/grad_hist/0"][0][1]["bucket"]
    alert = golden["runs"]["agc"]["text"]["gradwatch/alerts"][0]
    n_alerts = len(golden["runs"]["agc"]["text"]["gradwatch/alerts"])
    assert compare(golden, changed) == [
        f"agc: text gradwatch/alerts: 1 of {n_alerts} steps differ; first at step {alert[0]}: "
        f"{[alert[1][0] + ' (reworded)']!r}, expected {alert[1]!r}",
        "dense: histograms gradwatch/grad_hist/0: 1 of 3 steps differ; first at step 0: bucket counts "
        f"{hist['bucket']}, expected {expected_bucket}",
        "dense: scalars tags gone: ['gradwatch/clip/coef']",
        "dense: scalars tags added: ['gradwatch/renamed']",
        "dense: scalars gradwatch/global/grad_norm: 2 of 12 steps differ; first at step 3: "
        f"{before * (1 + 1e-5)!r}, expected {before!r}",
        f"dense: scalars gradwatch/loss: steps {[s for s, _ in dense['gradwatch/loss']]}, expected {list(range(12))}",
        "jump: images tags added: ['gradwatch/flow']",
    ]
    assert compare(golden, json.loads(json.dumps(golden))) == []  # NaN matches NaN


def test_an_appended_alert_record_is_not_part_of_the_visible_text(tmp_path):
    from tensorboard.plugins.text.summary_v2 import text_pb
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as writer:
        record = RECORDS_MARKER + ' [{"kind": "nonfinite"}] -->'
        writer.file_writer.add_summary(text_pb("gradwatch/alerts", "- **nonfinite** at `2`" + record), 3)
        writer.file_writer.add_summary(text_pb("gradwatch/alerts", "- **dead** at `1`"), 4)
    assert read_run(tmp_path)["text"] == {"gradwatch/alerts": [[3, ["- **nonfinite** at `2`"]],
                                                               [4, ["- **dead** at `1`"]]]}


def _main(argv: list[str]) -> int:
    import tempfile

    if argv != ["--write"]:
        print(__doc__)
        print("usage: python tests/test_tags_unchanged.py --write")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        data = generate(Path(tmp))
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    n = sum(len(v) for run in data["runs"].values() for v in run.values())
    print(f"wrote {GOLDEN} ({n} tags in {len(data['runs'])} runs) with gradwatch from {gradwatch.__file__}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
