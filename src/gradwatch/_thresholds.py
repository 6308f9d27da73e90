"""Every rule's parameters in one frozen, validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ._validate import check_int, check_number

__all__ = ["Thresholds"]


@dataclass(frozen=True)
class Thresholds:
    """Parameters of gradwatch's rules. The defaults are calibrated (tests/test_calibration.py) to stay silent on
    healthy training and to fire on the classic failures; docs/rules.md explains each one.

    Attributes:
        vanishing_rms: absolute floor: a layer whose gradient RMS (``grad_norm / sqrt(numel)``) is below it is starved.
        vanishing_ratio: relative floor: a layer whose gradient RMS is below this fraction of the strongest layer's
            RMS is starved. Not applied while the global norm is over ``exploding_norm`` (then the strongest layer is
            the sick one, not the others).
        vanishing_patience: steps a layer must stay starved before ``vanishing`` is reported (one bad step is noise).
        exploding_norm: absolute ceiling on the global gradient norm the optimizer receives (after the watcher's
            clipper, if any); the layers named are those whose own norm, before clipping, is over it.
        jump_factor: a global norm (after the watcher's clipper, if any) this many times above its running baseline
            is a sudden jump (``exploding``).
        jump_warmup: steps observed before the jump rule may fire (the baseline must settle first).
        baseline_beta: smoothing of the running baseline (an exponential moving average of the global norm; steps
            flagged as jumps or non-finite do not update it).
        spike_z: the ``spike`` rule fires when the global gradient norm (before clipping), or the loss passed to
            ``watcher.step(loss=...)``, is this many standard deviations above its EMA mean (OLMo uses 6; ``inf``
            disables the rule). See ``gradwatch._spikes``.
        spike_factor: ... and the gradient norm is also at least this many times its EMA mean (>= 1). Healthy runs
            have steep swings: up to ~8x the EMA in tests/zoo.py runs, 11x for two steps in a GPT-2 from
            ``transformers`` trained with AdamW (the loss unmoved), hence 25.
        spike_loss_margin: ... and the loss is also above its EMA mean by at least this fraction of ``|mean|``.
        spike_alpha: EMA weight of the past for the spike baselines, in ``[0, 1)`` (0.98: a memory of ~50 steps).
        spike_warmup: steps whose mean and variance initialise the spike baselines; the rule is silent before.
        saturated_frac: with ``activations=True``, a saturating activation (Sigmoid, Tanh, ...) with at least this
            fraction of its outputs in the flat region is saturated (docs/activations.md).
        dead_frac: with ``activations=True``, a ReLU-family activation with at least this fraction of its units at
            zero for the whole batch has dead units.
        activation_patience: sampled steps ``saturated`` or ``dead`` must hold before it is reported.
        divergence_factor: the ``divergence`` rule fires when the loss (the median of the last three steps) is this
            many times its lowest level so far (``gradwatch._divergence``; ``inf`` disables this test) ...
        divergence_floor: ... where "times" is measured against at least this fraction of the starting loss (a
            loss that fell near zero may triple in noise without diverging) ...
        divergence_start_factor: ... or when it is this many times the starting loss (a run that never learned;
            ``inf`` disables this test) ...
        divergence_patience: ... for this many steps in a row.
        update_ratio_ceiling: with an optimizer attached, an update-to-weight ratio (the median over the layers)
            above this is ``exploding``: the weights change by this fraction of themselves in one step.
        update_jump_factor: ... and so is a median update ratio this many times its running baseline.

    Examples:
        >>> Thresholds(vanishing_patience=5).vanishing_patience
        5
    """

    vanishing_rms: float = 1e-8
    vanishing_ratio: float = 3e-4
    vanishing_patience: int = 50
    exploding_norm: float = 1e4
    jump_factor: float = 50.0
    jump_warmup: int = 10
    baseline_beta: float = 0.9
    spike_z: float = 6.0
    spike_factor: float = 25.0
    spike_loss_margin: float = 0.25
    spike_alpha: float = 0.98
    spike_warmup: int = 25
    saturated_frac: float = 0.5
    dead_frac: float = 0.5
    activation_patience: int = 5
    divergence_factor: float = 2.5
    divergence_floor: float = 0.05
    divergence_start_factor: float = 2.5
    divergence_patience: int = 3
    update_ratio_ceiling: float = 0.3
    update_jump_factor: float = 30.0

    def __post_init__(self) -> None:
        check_number("Thresholds.vanishing_rms", self.vanishing_rms, nonnegative=True)
        check_number("Thresholds.vanishing_ratio", self.vanishing_ratio, nonnegative=True, below=1.0)
        check_int("Thresholds.vanishing_patience", self.vanishing_patience, minimum=1)
        check_number("Thresholds.exploding_norm", self.exploding_norm, positive=True, allow_inf=True)
        check_number("Thresholds.jump_factor", self.jump_factor, positive=True, allow_inf=True)
        if self.jump_factor <= 1:
            from ._errors import ConfigurationError

            raise ConfigurationError(f"Thresholds.jump_factor={self.jump_factor!r} must be > 1 (use inf to disable).")
        check_int("Thresholds.jump_warmup", self.jump_warmup, minimum=0)
        check_number("Thresholds.saturated_frac", self.saturated_frac, positive=True, at_most=1.0)
        check_number("Thresholds.dead_frac", self.dead_frac, positive=True, at_most=1.0)
        check_int("Thresholds.activation_patience", self.activation_patience, minimum=1)
        check_number("Thresholds.baseline_beta", self.baseline_beta, nonnegative=True, below=1.0)
        check_number("Thresholds.spike_z", self.spike_z, positive=True, allow_inf=True)
        check_number("Thresholds.spike_factor", self.spike_factor, positive=True, allow_inf=True)
        if self.spike_factor < 1:
            from ._errors import ConfigurationError

            raise ConfigurationError(
                f"Thresholds.spike_factor={self.spike_factor!r} must be >= 1 (use inf to disable).")
        check_number("Thresholds.spike_loss_margin", self.spike_loss_margin, nonnegative=True, allow_inf=True)
        check_number("Thresholds.spike_alpha", self.spike_alpha, nonnegative=True, below=1.0)
        check_int("Thresholds.spike_warmup", self.spike_warmup, minimum=1)
        for name in ("divergence_factor", "divergence_start_factor", "update_jump_factor"):
            value = check_number(f"Thresholds.{name}", getattr(self, name), positive=True, allow_inf=True)
            if value <= 1:
                from ._errors import ConfigurationError

                raise ConfigurationError(f"Thresholds.{name}={value!r} must be > 1 (use inf to disable).")
        check_number("Thresholds.divergence_floor", self.divergence_floor, nonnegative=True)
        check_int("Thresholds.divergence_patience", self.divergence_patience, minimum=1)
        check_number("Thresholds.update_ratio_ceiling", self.update_ratio_ceiling, positive=True, allow_inf=True)

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
