"""WatchConfig: the one definition of watch()'s options, validated once; the signatures and the docs agree with it."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch import ConfigurationError, WatchConfig
from gradwatch._config import watch_options

ROOT = Path(__file__).resolve().parents[1]
CALLBACK_OWN = {"progress_bar", "summary", "amp_overflow_patience"}  # options of the callback alone


def _defaults(fn) -> dict[str, object]:
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def test_watch_takes_exactly_the_config_options_with_the_same_defaults():
    config_defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                       for f in dataclasses.fields(WatchConfig) if f.name in watch_options()}
    assert list(_defaults(gradwatch.watch)) == watch_options()
    assert _defaults(gradwatch.watch) == config_defaults


def test_the_callback_takes_the_config_options_minus_the_trainers_own():
    lightning = pytest.importorskip("gradwatch.lightning")
    callback = _defaults(lightning.GradWatchCallback)
    shared = set(callback) - CALLBACK_OWN
    # the Trainer supplies the writer (its loggers), the process group, the optimizers and the GradScaler
    assert shared == set(watch_options()) - {"log_dir", "writer", "distributed", "optimizer", "scaler"}
    watch_defaults = _defaults(gradwatch.watch)
    assert {k: callback[k] for k in shared - {"every_n_steps", "on_nonfinite"}} == \
        {k: watch_defaults[k] for k in shared - {"every_n_steps", "on_nonfinite"}}
    assert callback["every_n_steps"] is None  # follows the Trainer's log_every_n_steps


def _table_options(path: Path, header: str) -> dict[str, str]:
    """Option name -> default as the table in ``path`` under the row ``header`` states it."""
    lines = path.read_text().splitlines()
    start = lines.index(header)
    out: dict[str, str] = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        m = re.fullmatch(r"`(\w+)(?:=(.*))?`", cells[0])
        assert m, line
        out[m.group(1)] = m.group(2) if m.group(2) is not None else cells[1].strip("`")
    return out


def test_the_quickstart_table_lists_every_option_of_watch_with_its_default():
    table = _table_options(ROOT / "docs" / "quickstart.md", "| option | default | meaning |")
    assert list(table) == watch_options()
    defaults = _defaults(gradwatch.watch)
    for name, stated in table.items():
        if name == "thresholds":
            assert stated == "Thresholds()"  # None means the defaults
        elif name == "layers":
            assert stated == "all"
            assert defaults[name] is None
        else:
            assert stated == repr(defaults[name]).replace("'", '"'), name


def test_the_lightning_table_lists_every_option_of_the_callback_with_its_default():
    lightning = pytest.importorskip("gradwatch.lightning")
    table = _table_options(ROOT / "docs" / "lightning.md", "| argument | meaning |")
    defaults = _defaults(lightning.GradWatchCallback)
    assert list(table) == list(defaults)
    for name, stated in table.items():
        assert stated == repr(defaults[name]).replace("'", '"'), name


@pytest.mark.parametrize(("option", "value", "fragment"), [
    ("every_n_steps", 0, "every_n_steps=0"),
    ("thresholds", 3, "thresholds=3"),
    ("clip", -1.0, "clip=-1.0"),
    ("on_nonfinite", "explode", "'warn', 'raise', 'skip', 'ignore'"),
    ("on_spike", "stop", "on_spike='stop'"),
    ("layers", [], "layers=[]"),
    ("sinks", [object()], "is not a gradwatch Sink"),
    ("histogram_every_n_steps", 0, "histogram_every_n_steps=0"),
    ("histograms", ("grad", "grad"), "histograms="),
    ("activations", 3, "activations=3"),
    ("activation_every_n_steps", 0, "activation_every_n_steps=0"),
    ("nan_origin", "always", "nan_origin='always'"),
    ("distributed", "on", "distributed='on'"),
    ("log_dir", 5, "log_dir=5"),
    ("writer", object(), "must be a SummaryWriter"),
    ("optimizer", 3, "optimizer=3"),
    ("optimizer", [], "optimizer=[]"),
    ("optimizer", ["adam"], "'adam' (str) is not a torch.optim.Optimizer"),
])
def test_every_bad_option_is_refused_by_the_config_naming_it(option, value, fragment):
    with pytest.raises(ConfigurationError, match=re.escape(fragment)):
        WatchConfig(**{option: value})


def test_a_bad_option_is_refused_before_the_model_is_touched(tmp_path):
    model = nn.Linear(2, 1)
    with pytest.raises(ConfigurationError):
        gradwatch.watch(model, log_dir=tmp_path / "run", activations=True, every_n_steps=0)
    assert not (tmp_path / "run").exists()
    assert not model._forward_hooks
    assert not model._forward_pre_hooks


def test_values_are_normalised_and_replace_validates_again():
    config = WatchConfig(clip=2.0, layers=["a*", "b"], histograms="param", activations=["x*"])
    assert isinstance(config.clipper, gradwatch.clipping.NormClip)
    assert config.clipper.max_norm == 2.0
    assert config.layers == ("a*", "b")
    assert config.histograms == ("param",)
    assert config.activations == ("x*",)
    assert isinstance(config.thresholds, gradwatch.Thresholds)
    assert config.nan_origin == "sampled"
    assert config.replace(every_n_steps=7).every_n_steps == 7
    with pytest.raises(ConfigurationError, match="every_n_steps=-1"):
        config.replace(every_n_steps=-1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.every_n_steps = 3  # type: ignore[misc]


def test_a_watcher_runs_from_a_config_and_refuses_a_config_with_options():
    model = nn.Linear(3, 1)
    config = WatchConfig(every_n_steps=2, clip=0.5)
    model(torch.ones(2, 3)).sum().backward()
    with gradwatch.Watcher(model, config) as watcher:
        report = watcher.step()
        assert watcher.config is config
        assert watcher.every_n_steps == 2
        assert report.clipped_norm == pytest.approx(0.5)
    with pytest.raises(ConfigurationError, match="not both"):
        gradwatch.Watcher(model, config, clip=1.0)


def test_verbose_maps_onto_the_gradwatch_loggers_level():
    import logging

    logger = logging.getLogger("gradwatch")
    old = logger.level
    try:
        for verbose, level in ((False, logging.ERROR), (True, logging.DEBUG), (logging.WARNING, logging.WARNING)):
            gradwatch.watch(nn.Linear(2, 1), verbose=verbose).close()
            assert logger.level == level
        logger.setLevel(logging.WARNING)
        gradwatch.watch(nn.Linear(2, 1)).close()  # None: the user's level stays
        assert logger.level == logging.WARNING
    finally:
        logger.setLevel(old)
    with pytest.raises(ConfigurationError, match="verbose='loud'"):
        WatchConfig(verbose="loud")
