"""The dashboard: custom-scalars layout, layers table, device histograms and the flow figure, read back from real
event files with TensorBoard's EventAccumulator."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch import nn

import gradwatch
from gradwatch._dashboard import DashboardLogger, build_layout, parse_layers_markdown
from gradwatch._errors import ConfigurationError
from gradwatch._flowplot import (
    MissingExtraError,
    flow_figure_png,
    png_size,
    require_matplotlib,
)
from gradwatch._histograms import device_histograms, unpack_histograms


def _read(path):
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0, "histograms": 0, "images": 0})
    acc.Reload()
    return acc


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2))


def _set_grads(model, scale=1.0):
    """Known gradients: weight of layer 0 is 0..11 minus 5.5 (times scale), every other entry 0.25."""
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    model[0].weight.grad = (torch.arange(12, dtype=torch.float32).reshape(4, 3) - 5.5) * scale


def _reference(values, bins=64):
    """float64 reference of what gradwatch's histogram of ``values`` must hold (trimmed to its non-empty buckets)."""
    v = np.asarray(values, dtype=np.float64)
    m = np.abs(v).max()
    counts, edges = np.histogram(v, bins=bins, range=(-m, m))
    nz = np.flatnonzero(counts)
    lo, hi = nz[0], nz[-1]
    return edges[lo + 1:hi + 2], counts[lo:hi + 1], edges[lo], edges[hi + 1], v.sum(), (v ** 2).sum(), v.size


def test_layout_and_layers_table_are_written_once_per_run(tmp_path):
    model = _model()
    with gradwatch.watch(model, log_dir=tmp_path, clip=1.0, every_n_steps=2) as w:
        for _ in range(5):
            _set_grads(model)
            w.step(loss=torch.tensor(0.5))
    acc = _read(tmp_path)
    events = acc.Tensors("custom_scalars__config__")
    assert len(events) == 1
    assert events[0].step == 0
    layout = layout_pb2.Layout.FromString(events[0].tensor_proto.string_val[0])
    (category,) = layout.category
    assert category.title == "gradwatch"
    assert not category.closed
    charts = {c.title: list(c.multiline.tag) for c in category.chart}
    assert charts["global gradient norm before and after clipping, with the clip threshold"] == [
        "gradwatch/global/grad_norm$", "gradwatch/global/grad_norm_clipped$", "gradwatch/clip/threshold$"]
    assert charts["gradient norm by layer"] == ["gradwatch/grad_norm/"]
    assert charts["max |grad| by layer"] == ["gradwatch/grad_max/"]
    assert charts["symptoms by kind (layers affected per step)"] == ["gradwatch/symptoms/"]
    assert "loss" in charts
    assert "parameter norm by layer" in charts
    assert not any(t.startswith("activation") for t in charts)  # no activation statistics were logged
    # every regex matches tags that are really in the run (TensorBoard uses re.match)
    import re
    scalar_tags = acc.Tags()["scalars"]
    for title, regexes in charts.items():
        assert any(re.match(rx, t) for rx in regexes for t in scalar_tags), title
    text = acc.Tensors("gradwatch/layers")
    assert len(text) == 1
    layers = parse_layers_markdown(text[0].tensor_proto.string_val[0].decode())
    assert [(info.name, info.kind, info.numel) for info in layers] == [("0", "Linear", 16), ("2", "Linear", 10)]


def test_layout_charts_follow_the_logged_tags():
    plain = [c.title for c in build_layout(["gradwatch/grad_norm/a"]).category[0].chart]
    assert plain[0] == "global gradient norm before and after clipping, with the clip threshold"
    hooks = build_layout(["gradwatch/act_mean/a", "gradwatch/act_saturated_frac/a", "gradwatch/grad_out_norm/a"])
    titles = [c.title for c in hooks.category[0].chart]
    assert "activation mean by module" in titles
    assert "fraction of saturated activations by module" in titles
    assert "gradient norm flowing out of each module (w.r.t. its output)" in titles
    assert "activation std by module" not in titles


def test_gradient_histograms_hold_the_known_values(tmp_path):
    model = _model()
    with gradwatch.watch(model, log_dir=tmp_path, histogram_every_n_steps=2, histograms=("grad", "param")) as w:
        for step in range(5):
            _set_grads(model, scale=1.0 + step)
            w.step()
    acc = _read(tmp_path)
    tags = set(acc.Tags()["histograms"])
    assert tags == {f"gradwatch/{k}_hist/{layer}" for k in ("grad", "param") for layer in ("0", "2")}
    events = acc.Histograms("gradwatch/grad_hist/0")
    assert [e.step for e in events] == [0, 2, 4]
    for e in events:
        scale = 1.0 + e.step
        values = list((np.arange(12) - 5.5) * scale) + [0.25] * 4  # weight, then bias
        limits, counts, lo, hi, total, sumsq, num = _reference(values)
        h = e.histogram_value
        np.testing.assert_allclose(h.bucket_limit, limits, rtol=1e-6)
        np.testing.assert_array_equal(h.bucket, counts)
        assert h.min == pytest.approx(lo)
        assert h.max == pytest.approx(hi)
        assert h.num == num
        assert h.sum == pytest.approx(total)
        assert h.sum_squares == pytest.approx(sumsq, rel=1e-6)
    params = acc.Histograms("gradwatch/param_hist/2")[0].histogram_value
    ref = torch.cat([p.detach().reshape(-1) for p in model[2].parameters()]).double().numpy()
    assert params.num == ref.size
    assert params.sum == pytest.approx(ref.sum(), rel=1e-5)
    assert params.max >= ref.max()
    assert params.min <= ref.min()


def test_histograms_show_the_gradients_before_clipping():
    model = _model()
    sink = gradwatch.MemorySink()
    with gradwatch.watch(model, sinks=[sink], clip=1e-3, histogram_every_n_steps=1) as w:
        _set_grads(model, scale=10.0)
        w.step()
    h = sink.histograms["gradwatch/grad_hist/0"][0][1]
    assert h.max == pytest.approx(55.0)  # largest |g| = 5.5 * 10 before clipping (1e-3 after)
    assert float(model[0].weight.grad.abs().max()) < 1e-3  # and the clipper did clip


def test_a_nonfinite_layer_has_no_histogram_that_step_and_the_others_do():
    model = _model()
    sink = gradwatch.MemorySink()
    with gradwatch.watch(model, sinks=[sink], histogram_every_n_steps=1) as w:
        _set_grads(model)
        model[2].weight.grad[0, 0] = float("nan")
        w.step()
    assert "gradwatch/grad_hist/2" not in sink.histograms
    assert sink.histograms["gradwatch/grad_hist/0"][0][1].num == 16


def test_device_histograms_edge_cases():
    cpu = torch.device("cpu")
    packed = device_histograms([[], [torch.zeros(3)], [torch.tensor([1.0, -1.0, 0.5])]], home=cpu, bins=4)
    out = unpack_histograms(packed.numpy(), ["empty", "zeros", "x"], bins=4)
    assert "empty" not in out
    assert out["zeros"].counts.tolist() == [3.0]
    assert out["zeros"].max == 0.0
    assert out["x"].counts.tolist() == [1.0, 0.0, 0.0, 2.0]
    assert out["x"].limits.tolist() == [-0.5, 0.0, 0.5, 1.0]
    half = device_histograms([[torch.tensor([1.0, -1.0, 0.5], dtype=torch.float16)]], home=cpu, bins=4)
    np.testing.assert_allclose(half.numpy(), packed.numpy()[-8:])


def test_flow_figure_images_every_n_steps(tmp_path):
    model = _model()
    with gradwatch.watch(model, log_dir=tmp_path, figure_every_n_steps=3) as w:
        for _ in range(7):
            _set_grads(model)
            w.step()
    images = _read(tmp_path).Images("gradwatch/flow")
    assert [i.step for i in images] == [0, 3, 6]
    assert images[0].encoded_image_string[:4] == b"\x89PNG"
    assert (images[0].height, images[0].width) == png_size(images[0].encoded_image_string)


def test_options_are_validated_at_construction():
    model = _model()
    with pytest.raises(ConfigurationError, match=r"histograms=.*'grad', 'param'"):
        gradwatch.watch(model, histogram_every_n_steps=1, histograms=("activation",))
    with pytest.raises(ConfigurationError, match="figure_every_n_steps=0"):
        gradwatch.watch(model, figure_every_n_steps=0)
    with pytest.raises(ConfigurationError, match="histogram_every_n_steps"):
        gradwatch.watch(model, histogram_every_n_steps=1.5)
    from gradwatch.lightning import GradWatchCallback

    with pytest.raises(ConfigurationError, match="histogram_every_n_steps"):
        GradWatchCallback(histogram_every_n_steps=0)


def test_without_matplotlib_the_error_names_the_plot_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install matplotlib .*'\.\[plot\]'"):
        require_matplotlib()
    with pytest.raises(MissingExtraError, match=r"pip install matplotlib .*'\.\[plot\]'"):
        flow_figure_png(["a"], [1.0], [1.0])
    with pytest.raises(ConfigurationError, match=r"pip install matplotlib .*'\.\[plot\]'"):
        gradwatch.watch(_model(), figure_every_n_steps=10)
    gradwatch.watch(_model(), histogram_every_n_steps=10).close()  # histograms do not need it


def test_dashboard_logger_without_histograms_adds_nothing_to_the_device_vector():
    model = _model()
    logger = DashboardLogger([], histogram_every_n_steps=None)
    assert logger.device_part(0, [], torch.device("cpu"), torch.float64) is None
    with gradwatch.watch(model, histogram_every_n_steps=4) as w:
        _set_grads(model)
        w.step()
        assert w._pending == [] or w._pending[0].tail_len == 2 * (64 + 4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_histogram_and_figure_steps_make_no_host_sync_on_cuda():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)).cuda()
    sink = gradwatch.MemorySink()
    with gradwatch.watch(model, sinks=[sink], every_n_steps=2, histogram_every_n_steps=1,
                         histograms=("grad", "param"), figure_every_n_steps=1) as w:
        for _ in range(2):  # warm-up: caches, the first logging step
            model.zero_grad(set_to_none=False)
            model(torch.randn(32, 64, device="cuda")).pow(2).mean().backward()
            w.step()
        torch.cuda.synchronize()
        for _ in range(3):
            model.zero_grad(set_to_none=False)
            model(torch.randn(32, 64, device="cuda")).pow(2).mean().backward()
            torch.cuda.set_sync_debug_mode("error")
            try:
                w.step()  # histograms computed on the device, queued with the step's vector: no sync
            finally:
                torch.cuda.set_sync_debug_mode("default")
    assert len(sink.histograms["gradwatch/grad_hist/0"]) == 5
    assert len(sink.images["gradwatch/flow"]) == 5


def test_histograms_and_activation_values_share_the_packed_vector_without_mixing_up():
    """Both ride at the end of the step's one vector: each must read back its own slice."""
    import gradwatch
    from gradwatch import MemorySink

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Sigmoid(), torch.nn.Linear(8, 1))
    sink = MemorySink()
    with gradwatch.watch(model, sinks=[sink], histogram_every_n_steps=1, activations=True) as watcher:
        x = torch.randn(16, 3)
        hidden = torch.sigmoid(model[0](x))
        model(x).sum().backward()
        watcher.step()
    (_step, h), *_ = sink.histograms["gradwatch/grad_hist/0"]
    grads = torch.cat([p.grad.flatten() for p in model[0].parameters()]).double()
    assert h.num == grads.numel()
    assert h.counts.sum() == grads.numel()
    assert max(-h.min, h.max) == pytest.approx(float(grads.abs().max()), rel=1e-6)  # buckets span ±max|g|
    assert h.sum == pytest.approx(float(grads.sum()), rel=1e-5, abs=1e-9)
    assert sink.series("gradwatch/act_mean/1")[0][1] == pytest.approx(float(hidden.mean()), rel=1e-5)


def test_a_deep_model_gets_summaries_and_one_collapsed_category_per_block():
    """Above 16 layers no chart draws every layer: the main category has the log10 summaries across layers, and each
    block of layers (``h.<i>`` of a transformer) a collapsed category whose regexes match exactly its layers."""
    import re

    from gradwatch._dashboard import LayerInfo, layer_blocks

    names = ["wte"] + [f"h.{i}.{part}" for i in range(12) for part in ("attn.c_attn", "attn.c_proj", "mlp.c_fc")]
    names.append("ln_f")
    tags = [f"gradwatch/{kind}/{n}" for kind in ("grad_norm", "grad_max", "update_ratio") for n in names]
    layout = build_layout(tags, [LayerInfo(n, "Linear", 4) for n in names])
    main, *blocks = layout.category
    charts = {c.title: list(c.multiline.tag) for c in main.chart}
    assert "gradient norm by layer" not in charts
    assert "update-to-weight ratio by layer" not in " ".join(charts)
    assert charts["log10 gradient RMS across layers: min, median, max"] == ["GradWatch/grad_rms_log10_"]
    assert charts["log10 update ratio across layers: min, median, max"] == ["GradWatch/update_ratio_log10_"]
    assert [b.title for b in blocks] == ["gradwatch: wte"] + [f"gradwatch: h.{i}" for i in range(12)] + [
        "gradwatch: ln_f"]
    assert all(b.closed for b in blocks)
    h3 = blocks[4]
    assert [c.title for c in h3.chart] == ["gradient norm (h.3)", "max |grad| (h.3)", "update ratio (log scale) (h.3)"]
    (rx,) = h3.chart[0].multiline.tag
    assert sorted(t for t in tags if re.match(rx, t)) == [f"gradwatch/grad_norm/h.3.{p}" for p in
                                                          ("attn.c_attn", "attn.c_proj", "mlp.c_fc")]
    # a 300-layer MLP: runs of 24 layers, never more than 48 categories, every layer in exactly one
    mlp = [str(2 * i) for i in range(300)]
    cut = layer_blocks(mlp)
    assert len(cut) == 13
    assert max(len(ns) for _, ns in cut) == 24
    assert [n for _, ns in cut for n in ns] == mlp
    assert cut[0][0] == "layers 0\u201346"
    assert len(layer_blocks([f"b.{i}.fc" for i in range(500)])) <= 48
