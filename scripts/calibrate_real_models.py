"""Train the real-architecture calibration cases of tests/real_models.py under gradwatch and record what it sees.

Each case is trained with its standard (or sick) recipe under ``gradwatch.watch(model, sinks=[MemorySink()])``
(default options), ``watcher.step(loss=loss)`` after ``backward()`` and before ``optimizer.step()``. Per step it records
the loss, the learning rate, the global and per-layer gradient norms, the per-layer parameter norms, the per-layer
update-to-weight ratio ``||w_after - w_before|| / ||w_before||`` (from parameter snapshots around ``optimizer.step()``,
parameters grouped by gradwatch layer), the gradient RMS of the q, k and v slices of fused attention projections, and
every symptom gradwatch reports. One JSON per case goes to ``<out>/<name>.json`` (Python's json: NaN and Infinity
appear as such); a summary table and per-role statistics are printed.

Usage::

    python scripts/calibrate_real_models.py [names... | healthy | sick] [--steps N] [--seed S] [--out DIR] [--tokens N]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
import unittest
import warnings
from collections import Counter, defaultdict
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import gradwatch  # noqa: E402
import real_models as rm  # noqa: E402

ROLES = ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o", "mlp", "embed", "norm", "conv", "rnn", "head", "other")
VANISHING_RATIO = gradwatch.Thresholds().vanishing_ratio


def _depth(name: str) -> int | None:
    """The first integer segment of a layer name (the block index), else None."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def _rms(tensors: list[torch.Tensor]) -> float:
    sq = sum(float(t.double().pow(2).sum()) for t in tensors)
    n = sum(t.numel() for t in tensors)
    return math.sqrt(sq / n) if n else math.nan


def run_case(name: str, steps: int | None = None, seed: int = 0, tokens: int = 128) -> dict[str, Any]:
    """Train case ``name`` for ``steps`` steps (default: the case's; the schedule then spans the default horizon)."""
    case = rm.CASES[name]
    steps_arg = steps
    steps = steps if steps is not None else case.steps
    t_start = time.perf_counter()
    model, make_batch, loss_fn = rm.build(name, seed, tokens=tokens)
    opt, sched = rm.standard_recipe(name, model, steps_arg)
    build_s = time.perf_counter() - t_start
    sink = gradwatch.MemorySink()
    watcher = gradwatch.watch(model, sinks=[sink])
    names = list(watcher)
    groups = rm.param_groups_by_layer(model)
    missing = [n for n in names if n not in groups]
    if missing:
        raise RuntimeError(f"{name}: watched layers without a parameter group: {missing}")
    modules = dict(model.named_modules())
    kinds = {n: type(modules["" if n == "__root__" else n]).__name__ for n in names}
    layers = [{"name": n, "kind": kinds[n], "role": rm.layer_role(n, kinds[n]), "depth": _depth(n),
               "numel": sum(p.numel() for p in groups[n]),
               "trainable": any(p.requires_grad for p in groups[n])} for n in names]
    fused = [n for n in names if layers[names.index(n)]["role"] == "attn_qkv"]
    rec: dict[str, Any] = {
        "loss": [], "lr": [], "global_norm": [],
        "grad_norm": {n: [] for n in names}, "param_norm": {n: [] for n in names},
        "update_ratio": {n: [] for n in names},
        "fused_rms": {n: {"q": [], "k": [], "v": []} for n in fused},
        "step_symptoms": [],  # [step, kind, layer, since] of every symptom holding at a step
    }
    t_watch = t_train = 0.0
    nonfinite_streak = 0
    steps_done = 0
    for step in range(steps):
        t0 = time.perf_counter()
        inputs = make_batch(step)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, inputs)
        loss.backward()
        t_train += time.perf_counter() - t0
        t0 = time.perf_counter()
        report = watcher.step(loss=loss)
        stats = report.layers
        symptoms = report.symptoms
        gnorm = report.global_norm
        t_watch += time.perf_counter() - t0
        for n in names:
            s = stats[n]
            rec["grad_norm"][n].append(s.grad_norm)
            rec["param_norm"][n].append(s.param_norm)
        for n in fused:
            parts = dict(rm.fused_qkv(model, n))
            for part in "qkv":
                rec["fused_rms"][n][part].append(_rms(parts[part]) if part in parts else None)
        rec["step_symptoms"].extend([s.step, s.kind, s.layer, s.since] for s in symptoms)
        with torch.no_grad():
            before = {n: [p.detach().clone() for p in groups[n]] for n in names}
            wnorm = {n: math.sqrt(sum(float(b.double().pow(2).sum()) for b in before[n])) for n in names}
        rec["lr"].append(opt.param_groups[0]["lr"])
        t0 = time.perf_counter()
        opt.step()
        sched.step()
        t_train += time.perf_counter() - t0
        with torch.no_grad():
            for n in names:
                pairs = zip(groups[n], before[n], strict=True)
                d2 = sum(float((p.detach().double() - b.double()).pow(2).sum()) for p, b in pairs)
                ratio = math.sqrt(d2) / wnorm[n] if wnorm[n] > 0 and math.isfinite(wnorm[n]) else None
                rec["update_ratio"][n].append(ratio)
        loss_value = float(loss.detach())
        rec["loss"].append(loss_value)
        rec["global_norm"].append(gnorm)
        steps_done = step + 1
        nonfinite_streak = 0 if math.isfinite(loss_value) else nonfinite_streak + 1
        if nonfinite_streak >= 10:
            break
    summary = watcher.summary()
    watcher.close()
    wall = time.perf_counter() - t_start
    alerts = [{"kind": s.kind, "layer": s.layer, "step": s.step, "since": s.since, "severity": s.severity,
               "value": s.value, "threshold": s.threshold, "message": s.message, "advice": s.advice}
              for s in sink.alerts]
    out = {"name": name, "case": case._asdict(), "seed": seed, "tokens": tokens,
           "gradwatch": os.path.dirname(gradwatch.__file__), "steps_planned": steps, "steps": steps_done,
           "wall_s": wall, "build_s": build_s,
           "train_ms_per_step": 1000 * t_train / max(1, steps_done),
           "watch_ms_per_step": 1000 * t_watch / max(1, steps_done),
           "optimizer": type(opt).__name__, "layers": layers, "alerts": alerts, "summary": summary, **rec}
    out["analysis"] = analyse(out)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------------------------------------------------


def _median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.median(xs) if xs else None


def _quantile(xs: list[float], q: float) -> float | None:
    xs = sorted(x for x in xs if x is not None and math.isfinite(x))
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None


def loss_events(loss: list[float]) -> dict[str, Any]:
    """Steps where the loss first exceeds 2x and 10x its running minimum (over earlier steps) and 2x its first value;
    the first non-finite loss; the largest loss over the first; the largest loss over the running minimum of the earlier
    steps (``max_rise``), and the same for the median of three consecutive steps (``max_rise_med3``)."""
    out: dict[str, Any] = {"double_step": None, "x10_step": None, "double_first_step": None, "nonfinite_step": None,
                           "max_over_first": None, "max_rise": None, "max_rise_med3": None}
    rise = rise3 = 0.0
    run_min = math.inf
    for t, v in enumerate(loss):
        if not math.isfinite(v):
            out["nonfinite_step"] = t
            break
        if t > 0 and out["double_step"] is None and v > 2 * run_min:
            out["double_step"] = t
        if t > 0 and out["x10_step"] is None and v > 10 * run_min:
            out["x10_step"] = t
        if out["double_first_step"] is None and v > 2 * loss[0]:
            out["double_first_step"] = t
        if t > 0 and run_min > 0:
            rise = max(rise, v / run_min)
            if t >= 3:
                rise3 = max(rise3, statistics.median(loss[t - 2:t + 1]) / min(loss[:t - 2]))
        run_min = min(run_min, v)
    out["max_rise"], out["max_rise_med3"] = rise, rise3
    finite = [v for v in loss if math.isfinite(v)]
    if finite and finite[0] != 0:
        out["max_over_first"] = max(finite) / finite[0]
    return out


def analyse(r: dict[str, Any]) -> dict[str, Any]:
    layers = r["layers"]
    names = [lay["name"] for lay in layers]
    n_steps = r["steps"]
    numel = {lay["name"]: lay["numel"] for lay in layers}
    role = {lay["name"]: lay["role"] for lay in layers}
    # per-step gradient RMS and the strongest layer's
    rms = {n: [(g / math.sqrt(numel[n]) if g is not None else None) for g in r["grad_norm"][n]] for n in names}
    strongest = []
    for t in range(n_steps):
        vals = [rms[n][t] for n in names if rms[n][t] is not None and math.isfinite(rms[n][t])]
        strongest.append(max(vals) if vals else None)

    def rel(series: list[float | None]) -> list[float]:
        return [v / s for v, s in zip(series, strongest, strict=True) if v is not None and s and math.isfinite(v)]

    by_role_upd: dict[str, list[float]] = defaultdict(list)
    by_role_rms: dict[str, list[float]] = defaultdict(list)
    by_depth_upd: dict[int, list[float]] = defaultdict(list)
    frozen = []
    for lay in layers:
        n = lay["name"]
        ups = [u for u in r["update_ratio"][n][1:] if u is not None]  # 0 where float32 swallowed a tiny update
        if not lay["trainable"]:
            frozen.append(n)
            continue
        by_role_upd[lay["role"]].extend(ups)
        by_role_rms[lay["role"]].extend(rel(rms[n]))
        if lay["depth"] is not None and lay["role"] not in ("norm",):
            by_depth_upd[lay["depth"]].extend(ups)
    # q/k relative RMS: separate projections, or the slices of fused ones
    qk_rel: list[float] = []
    for n in names:
        if role[n] in ("attn_q", "attn_k"):
            qk_rel.extend(rel(rms[n]))
    for parts in r.get("fused_rms", {}).values():
        for part in "qk":
            qk_rel.extend(rel(parts[part]))
    # the same per step, for the fraction of steps where some q/k sits under the relative floor
    qk_series: list[list[float | None]] = [rms[n] for n in names if role[n] in ("attn_q", "attn_k")]
    qk_series += [parts[p] for parts in r.get("fused_rms", {}).values() for p in "qk"]
    steps_under = 0
    for t in range(n_steps):
        vals = [s[t] for s in qk_series if s[t] is not None]
        if vals and strongest[t] and min(vals) / strongest[t] < VANISHING_RATIO:
            steps_under += 1
    strongest_layer = Counter()
    for t in range(n_steps):
        best = max((n for n in names if rms[n][t] is not None and math.isfinite(rms[n][t])),
                   key=lambda n: rms[n][t], default=None)
        if best is not None:
            strongest_layer[best] += 1
    alerts = r["alerts"]
    first = min(alerts, key=lambda a: (a["step"], a["since"] or 0)) if alerts else None
    ev = loss_events(r["loss"])
    finite = [v for v in r["loss"] if math.isfinite(v)]
    depths = sorted(by_depth_upd)
    lag = None
    if first is not None and ev["double_step"] is not None:
        lag = first["step"] - ev["double_step"]
    ups_all = [u for n in names for u in r["update_ratio"][n][1:] if u is not None and n not in frozen]
    return {
        "loss_first": r["loss"][0] if r["loss"] else None,
        "loss_last10": statistics.fmean(finite[-10:]) if finite else None,
        "loss_min": min(finite) if finite else None,
        "loss_events": ev,
        "alerts_by_kind": dict(Counter(a["kind"] for a in alerts)),
        "symptom_steps_by_kind": dict(Counter(s[1] for s in r["step_symptoms"])),
        "first_alert": first and {k: first[k] for k in ("kind", "layer", "step", "since")},
        "alert_lag_after_loss_double": lag,
        "frozen_layers": frozen,
        "update_ratio_median_by_role": {k: _median(v) for k, v in by_role_upd.items()},
        "update_ratio_p95_by_role": {k: _quantile(v, 0.95) for k, v in by_role_upd.items()},
        "update_ratio_median_all": _median(ups_all),
        "update_ratio_max_all": max(ups_all) if ups_all else None,
        "update_ratio_median_by_depth": {d: _median(by_depth_upd[d]) for d in depths},
        "grad_rms_over_strongest_median_by_role": {k: _median(v) for k, v in by_role_rms.items()},
        "qk_rms_over_strongest": {"median": _median(qk_rel), "p05": _quantile(qk_rel, 0.05),
                                  "min": min(qk_rel) if qk_rel else None,
                                  "frac_steps_some_qk_under_floor": steps_under / n_steps if qk_series else None},
        "strongest_layer": strongest_layer.most_common(3),
        "global_norm_median": _median(r["global_norm"]),
        "global_norm_max": max((g for g in r["global_norm"] if math.isfinite(g)), default=None),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------------------------------------------------


def _g(x: float | None, fmt: str = ".2g") -> str:
    return "-" if x is None else format(x, fmt)


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'model':20s} {'H/S':3s} {'steps':>5s} {'wall_s':>6s} {'tr_ms':>5s} {'gw_ms':>5s} {'loss0':>6s} "
          f"{'lossN':>6s} {'x2@':>4s} {'rise3':>5s} {'nan@':>4s}  alerts by kind | first alert (kind layer step since)")
    for r in results:
        a = r["analysis"]
        ev = a["loss_events"]
        kinds = ",".join(f"{k}:{v}" for k, v in sorted(a["alerts_by_kind"].items())) or "none"
        f = a["first_alert"]
        first = f"{f['kind']} {f['layer']} @{f['step']} (since {f['since']})" if f else "-"
        print(f"{r['name']:20s} {'H' if r['case']['healthy'] else 'S':3s} {r['steps']:5d} {r['wall_s']:6.1f} "
              f"{r['train_ms_per_step']:5.0f} {r['watch_ms_per_step']:5.1f} "
              f"{_g(a['loss_first'], '.3g'):>6s} {_g(a['loss_last10'], '.3g'):>6s} {_g(ev['double_step'], 'd'):>4s} "
              f"{_g(ev['max_rise_med3'], '5.3g')} "
              f"{_g(ev['nonfinite_step'], 'd'):>4s}  {kinds} | {first}")


def print_roles(results: list[dict[str, Any]]) -> None:
    short = {"attn_q": "q", "attn_k": "k", "attn_v": "v", "attn_qkv": "qkv", "attn_o": "o"}
    print("\nmedian update ratio ||dw||/||w|| by role  [grad RMS / strongest layer's, median]")
    for r in results:
        a = r["analysis"]
        upd, grel = a["update_ratio_median_by_role"], a["grad_rms_over_strongest_median_by_role"]
        parts = [f"{short.get(k, k)} {_g(upd.get(k))}[{_g(grel.get(k))}]" for k in ROLES if k in upd]
        print(f"  {r['name']:20s} " + "  ".join(parts))
    print("\nq/k grad RMS / strongest layer (fused: q,k slices): median p05 min, frac steps some q/k < "
          f"{VANISHING_RATIO:g}; update ratio by depth (first..last block, min-max); max update ratio")
    for r in results:
        a = r["analysis"]
        qk = a["qk_rms_over_strongest"]
        depth = a["update_ratio_median_by_depth"]
        dvals = [v for v in depth.values() if v is not None]
        dtxt = (f"{_g(depth[min(depth)])}..{_g(depth[max(depth)])} ({_g(min(dvals))}-{_g(max(dvals))}, "
                f"{len(depth)} blocks)" if dvals else "-")
        qtxt = (f"{_g(qk['median'])} {_g(qk['p05'])} {_g(qk['min'])} {_g(qk['frac_steps_some_qk_under_floor'])}"
                if qk["median"] is not None else "-")
        print(f"  {r['name']:20s} qk {qtxt:28s} depth {dtxt:36s} max {_g(a['update_ratio_max_all'])}")
    sick = [r for r in results if not r["case"]["healthy"]]
    if sick:
        print("\nsick runs: loss x2 / x10 running-min step, x2 first loss, first non-finite, max/first; first alert; "
              "lag (alert - x2)")
        for r in sick:
            a = r["analysis"]
            ev = a["loss_events"]
            f = a["first_alert"]
            print(f"  {r['name']:20s} x2@{_g(ev['double_step'], 'd')} x10@{_g(ev['x10_step'], 'd')} "
                  f"x2first@{_g(ev['double_first_step'], 'd')} "
                  f"nan@{_g(ev['nonfinite_step'], 'd')} max/first {_g(ev['max_over_first'], '.3g')}; "
                  f"first alert {f['kind'] + '@' + str(f['step']) if f else 'none'}; lag "
                  f"{_g(a['alert_lag_after_loss_double'], 'd')}; expected {r['case']['expect']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="cases (default: all); 'healthy' or 'sick' for a group")
    ap.add_argument("--steps", type=int, default=None, help="steps per case (default: the case's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/calib")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=128, help="vocabulary ids the token tasks use (1024: slower LMs)")
    ap.add_argument("--reprint", action="store_true", help="re-analyse and print the JSON files in --out, no training")
    args = ap.parse_args(argv)
    names: list[str] = []
    for n in args.names or ["all"]:
        if n == "all":
            names += list(rm.CASES)
        elif n in ("healthy", "sick"):
            names += [k for k, c in rm.CASES.items() if c.healthy == (n == "healthy")]
        elif n in rm.CASES:
            names.append(n)
        else:
            ap.error(f"unknown case {n!r}; known: {', '.join(rm.CASES)}")
    torch.set_num_threads(args.threads)
    logging.getLogger("gradwatch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=gradwatch.GradWatchWarning)
    os.makedirs(args.out, exist_ok=True)
    if not args.reprint:
        print(f"gradwatch from {os.path.dirname(gradwatch.__file__)}", flush=True)
    results = []
    for name in names:
        path = os.path.join(args.out, f"{name}.json")
        if args.reprint:
            if os.path.exists(path):
                with open(path) as fh:
                    r = json.load(fh)
                r["analysis"] = analyse(r)
                with open(path, "w") as fh:
                    json.dump(r, fh)
                results.append(r)
            continue
        try:
            r = run_case(name, args.steps, args.seed, args.tokens)
        except unittest.SkipTest as exc:
            print(f"{name}: skipped ({exc})", flush=True)
            continue
        with open(path, "w") as fh:
            json.dump(r, fh)
        a = r["analysis"]
        print(f"{name}: {r['steps']} steps in {r['wall_s']:.1f}s, loss {a['loss_first']:.3g} -> "
              f"{_g(a['loss_last10'], '.3g')}, alerts {a['alerts_by_kind'] or 'none'} -> {path}", flush=True)
        results.append(r)
    if results:
        print()
        print_table(results)
        print_roles(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
