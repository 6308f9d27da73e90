"""Transport of packed step vectors to the host, and their delivery there: pending records, transfers, unpacking;
then evaluation, history, sinks.

Steps queue their packed device vector here. ``Transport.send()`` moves every step not yet on its way as one
vector (one transfer per logged step): on the CPU it is there at once, and ``Transport.process_ready()`` delivers it
within the same ``step()``; on CUDA it is a non-blocking copy into pinned memory, read once its event says it has
landed (the next step, usually), so that a step never waits for the device unless asked to
(``Transport.resolve()``). ``Delivery`` is what happens to a step once on the host.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._actions import tally_clip
from ._cadence import Cadence, Recent, window_scalars
from ._evaluate import Evaluation, Evaluator
from ._fanout import SYMPTOM_KINDS, Fanout, step_values
from ._history import ClipTally, SymptomHistory
from ._replaced import ReplacedCheck
from ._rules import HostStats
from ._step import Record, layer_tags

__all__ = ["Delivery", "Transport"]


@dataclass
class _Transfer:
    records: list[Record]
    buffer: Tensor
    event: Any  # torch.cuda.Event


class Transport:
    """Pending records in step order, their transfers, and their hand-over to ``process`` once on the host."""

    def __init__(self, process: Callable[[Record], None]) -> None:
        self._process = process
        self.pending: list[Record] = []
        self._transfers: list[_Transfer] = []

    def queue(self, record: Record) -> None:
        self.pending.append(record)

    def send(self) -> None:
        """Move every step not yet on its way to the host, as one vector."""
        records = [r for r in self.pending if not r.sent]
        if not records:
            return
        for r in records:
            r.sent = True
        payload = torch.cat([r.packed for r in records if r.packed is not None])
        if payload.device.type == "cpu":
            _distribute(records, payload.numpy())
        elif payload.device.type == "cuda":
            buffer = torch.empty(payload.shape, dtype=payload.dtype, pin_memory=True)
            buffer.copy_(payload, non_blocking=True)  # not a sync: read once the event says it has landed
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record(torch.cuda.current_stream(payload.device))  # the copy's stream, not cuda:0's
            self._transfers.append(_Transfer(records, buffer, event))
        else:
            _distribute(records, payload.cpu().numpy())  # Intended host sync: other devices have no event API here.

    def collect(self, *, wait: bool = False) -> None:
        """Unpack the transfers that have landed (all of them with ``wait``) and process the records now on the host,
        in step order."""
        while self._transfers:
            t = self._transfers[0]
            if not wait and not t.event.query():
                break
            if wait:
                t.event.synchronize()  # Intended host sync, only when waiting: the copy was queued a step or more ago.
            _distribute(t.records, t.buffer.numpy())
            self._transfers.pop(0)
        self._process_landed()

    def process_ready(self) -> None:
        """Process the steps already on the host (on the CPU: the one just sent), in step order; wait for nothing."""
        self._process_landed()

    def _process_landed(self) -> None:
        while self.pending and self.pending[0].host_vec is not None:
            self._process(self.pending.pop(0))

    def resolve(self, record: Record) -> None:
        """Bring ``record`` and every earlier step to the host and process them (a sync if not there yet)."""
        if record.stats is not None:
            return
        self.send()
        self.collect(wait=True)

    def resolve_all(self) -> None:
        """Bring every pending step to the host and process it."""
        if self.pending:
            self.resolve(self.pending[-1])

    def clear(self) -> None:
        self._transfers.clear()


class Delivery:
    """A step once on the host: evaluated, recorded (history, clip tally), written to the sinks, said. Holds the model
    weakly and nothing of the watcher, so that a watcher dropped unclosed can still deliver its last steps."""

    def __init__(self, evaluate: Evaluator, fanout: Fanout, *, history: SymptomHistory, clip_tally: ClipTally | None,
                 probe: Any, replaced: ReplacedCheck, names: Sequence[str], model: nn.Module, on_spike: str,
                 cadence: Cadence | None = None) -> None:
        self.evaluate, self.fanout, self.history, self.clip_tally = evaluate, fanout, history, clip_tally
        self.probe, self.replaced, self.on_spike = probe, replaced, on_spike
        self.names = list(names)
        self.tags = layer_tags(names)  # made once: formatting them every logged step is not free
        self.kinds = SYMPTOM_KINDS + (probe.kinds if probe is not None else ())
        self.model: Callable[[], nn.Module | None] = weakref.ref(model)
        self.cadence = cadence  # the episode windows (None: none)
        self.recent = Recent()

    def __call__(self, r: Record) -> None:
        self.deliver(r, self.evaluate(r))

    def on_host(self, r: Record, sumsq: np.ndarray, global_norm: float) -> None:
        """A step judged from its sums on the host (``gradwatch._measure.Measure.on_host()``), then delivered."""
        self.deliver(r, self.evaluate.on_host(r, sumsq, global_norm))

    def deliver(self, r: Record, ev: Evaluation) -> None:
        """Record, write and say an evaluated step."""
        r.stats, r.symptoms, r.host_vec = ev.stats, ev.symptoms, None
        if self.on_spike != "skip":  # with on_spike="skip", step() counts the step once it knows it is not dropped
            tally_clip(self.clip_tally, r)
        if self._quiet(r, ev):  # the common step late in a run: nothing to write, nothing starts or ends
            self.fanout.quiet(r.step)
            if self.cadence is not None:
                self.recent.add(ev.stats, written=False)
            return
        self.history.extend([*ev.events, *ev.symptoms])
        scalars = step_values(r, ev, self.tags, self.kinds)
        was_open = set(self.fanout.episodes.open)
        if self.cadence is not None and self.cadence.windows and {s.kind for s in ev.symptoms} - was_open:
            self._window_before(self.cadence, r, ev.stats, scalars)  # an episode starts here
        self.fanout.write(r, ev, scalars)
        if self.cadence is not None:
            if set(self.fanout.episodes.open) != was_open:  # an episode started or ended: the steps after it log
                self.cadence.opened(r.step)
            self.recent.add(ev.stats, written=r.logged)
        if ev.onsets:  # a symptom that starts reaches the disk at once: a crash right after it loses nothing
            self.fanout.flush()
        self.fanout.announce(r.step, ev)
        model = self.model()
        if r.logged and model is not None and self.fanout.speaks and not ev.stats.has_grad.all():
            self.replaced.check(model, ev.stats.has_grad)

    def _quiet(self, r: Record, ev: Evaluation) -> bool:
        """Whether the step has nothing for the sinks or the console: it logs nothing, has no symptom, event, probe
        value, scaler, histogram or figure, and no episode is open."""
        return not (r.logged or ev.symptoms or ev.events or ev.probe_scalars or r.amp or ev.histograms is not None
                    or self.fanout.episodes.open or self.fanout.dashboard.figure_step(r.step))

    def _window_before(self, cadence: Cadence, r: Record, stats: HostStats, scalars: dict[str, float]) -> None:
        """An episode starts at ``r``: the recent steps before it that did not log, and ``r`` itself if it does not,
        write what they measured (``gradwatch._cadence.window_scalars()``), within the window budget."""
        earlier = self.recent.unwritten_before(r.step)
        if not cadence.spend(len(earlier) + (0 if r.logged else 1)):
            return
        for before in earlier:  # steps already written without them: their scalars reach the sinks now
            values = window_scalars(before, self.names)
            for sink in list(self.fanout.sinks):
                self.fanout.safe(sink, "write_scalars", before.step, values)
        if not r.logged:
            scalars.update(window_scalars(stats, self.names))

    def release_model(self) -> None:
        self.model = _no_model


def _no_model() -> nn.Module | None:
    return None


def _distribute(records: list[Record], vec: np.ndarray) -> None:
    offset = 0
    for r in records:
        n = r.layout.size
        r.host_vec = np.array(vec[offset:offset + n], dtype=np.float64)
        r.packed = None
        offset += n
