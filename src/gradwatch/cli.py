"""The ``gradwatch`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["FAIL_ON_KINDS", "main"]

#: What ``gradwatch report --fail-on`` takes: every symptom kind gradwatch writes, and ``any``.
FAIL_ON_KINDS: tuple[str, ...] = ("nonfinite", "vanishing", "exploding", "spike", "divergence", "saturated", "dead",
                                  "any")

DEMO_HELP = """\
Run a classic vanishing-gradient experiment: XOR through 10 hidden sigmoid layers of width 4, trained with SGD,
against the same network with residual connections. gradwatch watches both and writes TensorBoard logs; the demo
prints what each network reached (final loss and outputs), the episodes gradwatch found, and a diagnosis that follows
from both.

examples:
  gradwatch demo
  gradwatch demo --log-dir /tmp/gw --steps 3000
"""


def _demo(args: argparse.Namespace) -> int:
    from ._console import quiet
    from ._demo import conclusion, describe, run_xor
    from ._episodes import advice_lines

    root = os.fspath(args.log_dir)
    problem = _unwritable_dir(root, ("plain", "residual"))
    if problem is not None:
        print(f"gradwatch demo: cannot write the logs under --log-dir {root!r}: {problem}", file=sys.stderr)
        return 2
    print(f"gradwatch demo: XOR through 10 sigmoid layers of width 4, plain SGD (lr 1.0), {args.steps} steps, "
          "without and with residual connections.")
    results = []
    for residual in (False, True):
        sub = os.path.join(root, "residual" if residual else "plain")
        try:
            with quiet():  # the demo gives its own account of the episodes below
                results.append(run_xor(residual=residual, steps=args.steps, seed=args.seed, log_dir=sub))
        except OSError as exc:  # the disk filled up, the directory went away or became read-only while it ran
            print(f"gradwatch demo: cannot write the logs under {sub!r}: {_os_reason(exc)}", file=sys.stderr)
            return 2
        print(describe(results[-1]))
    plain, res = results
    for kind, text in list(advice_lines([*plain.history.episodes(), *res.history.episodes()]).items())[:1]:
        print(f"advice ({kind}): {text}")  # one: the demo prints at most 12 lines (gradwatch report gives them all)
    print(conclusion(plain, res))
    print(f"TensorBoard logs: tensorboard --logdir {root}   (then open the GRADWATCH tab)")
    return 0


REPORT_HELP = """\
Read the TensorBoard event files under LOGDIR (every run found, or --run NAME) and print gradwatch's diagnosis:
one row per symptom episode (its layers, the step its evidence began, the step it was detected, its last and end
step, its peak), the global norm's course (collapsed, exploded, went non-finite...), how often clipping acted, the
layers that starved, and the advice. Files cut mid-record (a crashed run) are read up to the cut.

exit status:
  0  report printed (and no --fail-on kind found)
  1  a --fail-on kind was found
  2  no event files, no such run, or no gradwatch data

examples:
  gradwatch report runs/gradwatch-demo
  gradwatch report runs/exp1 --run plain --json
  gradwatch report lightning_logs --fail-on nonfinite,exploding    # in CI: fail the job on NaN/Inf or explosions
"""

PLOT_HELP = """\
Draw the gradient-flow figure from event files: per-layer RMS and max |grad| in depth order on a log scale, the
layers with a symptom marked. Needs matplotlib (pip install matplotlib; from a
gradwatch clone: pip install '.[plot]').

examples:
  gradwatch plot runs/gradwatch-demo --run plain -o flow.png
  gradwatch plot runs/exp1 -o flow_step500.png --step 500
"""


def _unwritable_dir(root: str, subdirs: Sequence[str] = ()) -> str | None:
    """Why the directory ``root`` (and its ``subdirs``) cannot be created or written to, or ``None`` when it can: they
    are created now, so that a bad path fails before any work."""
    if os.path.exists(root) and not os.path.isdir(root):
        return f"{root!r} is a file, not a directory"
    try:
        for path in [root, *(os.path.join(root, sub) for sub in subdirs)]:
            os.makedirs(path, exist_ok=True)
            if not os.access(path, os.W_OK | os.X_OK):
                return f"{path!r} is not writable"
    except OSError as exc:
        return _os_reason(exc)
    return None


def _os_reason(exc: OSError) -> str:
    """An OSError in one line: its message and the path it names (``[Errno 20] Not a directory: 'x'``)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{reason}: {exc.filename!r}" if exc.filename is not None else reason


def _report(args: argparse.Namespace) -> int:
    from ._report import NoRunsError, diagnose_runs, select_runs, should_fail

    fail_on = list(args.fail_on)
    try:
        runs = select_runs(args.logdir, args.run)
    except NoRunsError as exc:
        print(f"gradwatch report: {exc}", file=sys.stderr)
        return 2
    reports = diagnose_runs(runs, chosen=args.run is not None)
    hits = should_fail(reports, fail_on)
    if args.json:
        print(json.dumps({"logdir": os.fspath(args.logdir), "runs": reports, "fail_on": fail_on, "failed": hits},
                         indent=2))
    else:
        _print_reports(reports, fail_on, hits)
    if not any(r["gradwatch"] for r in reports):
        if not args.json:
            print(f"gradwatch report: no gradwatch tags in the event files under {args.logdir!r}.", file=sys.stderr)
        return 2
    return 1 if hits else 0


def _print_reports(reports: Sequence[Mapping[str, Any]], fail_on: Sequence[str], hits: Sequence[str]) -> None:
    """Rich tables when ``rich`` is installed, else plain text; then the failing kinds, if any."""
    from ._report import format_text, print_rich

    try:
        import rich  # noqa: F401
    except ImportError:
        print(format_text(reports))
    else:
        print_rich(reports)
    if hits:
        print(f"\ngradwatch report: failing (--fail-on {','.join(fail_on)}): {'; '.join(hits)}", file=sys.stderr)


def _plot(args: argparse.Namespace) -> int:
    from ._flowplot import MissingExtraError, flow_figure_png
    from ._report import NoRunsError, flow_data, load_run, select_runs

    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):  # before reading the run and drawing: a typo in -o fails at once
        print(f"gradwatch plot: cannot write {args.output!r}: the directory {folder!r} does not exist.",
              file=sys.stderr)
        return 2
    try:
        runs = [load_run(name, path) for name, path in select_runs(args.logdir, args.run)]
        ours = [r for r in runs if r.has_gradwatch]
        if len(ours) != 1:
            names = ", ".join(r.name for r in ours) or "none"
            raise NoRunsError(f"{len(ours)} runs with gradwatch data under {args.logdir!r} ({names}): "
                              "choose one with --run NAME.")
        data = flow_data(ours[0], args.step)
        title = None if data["rms_known"] else (
            f"gradwatch: gradient flow by layer, step {data['step']} (layer sizes not logged: L2 norm, not RMS)")
        png = flow_figure_png(data["names"], data["rms"], data["maxabs"], flagged=data["flagged"], step=data["step"],
                              title=title, dpi=args.dpi)
    except (NoRunsError, MissingExtraError) as exc:
        print(f"gradwatch plot: {exc}", file=sys.stderr)
        return 2
    try:
        with open(args.output, "wb") as f:
            f.write(png)
    except OSError as exc:
        print(f"gradwatch plot: cannot write {args.output!r}: {_os_reason(exc)}", file=sys.stderr)
        return 2
    flagged = ", ".join(f"{k} ({v})" for k, v in data["flagged"].items()) or "none"
    print(f"gradwatch plot: wrote {args.output} (run {ours[0].name}, step {data['step']}, "
          f"{len(data['names'])} layers; flagged: {flagged})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradwatch",
        description="gradwatch: per-layer gradient diagnostics for PyTorch training.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            commands:
              demo     run the deep-sigmoid XOR experiment and print gradwatch's diagnosis
              report   print the diagnosis of logged runs from their event files (CI-friendly exit status)
              plot     draw the gradient-flow figure of a logged run to a PNG

            Run `gradwatch COMMAND --help` for a command's options and examples."""),
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"gradwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the deep-sigmoid XOR experiment", description=DEMO_HELP,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--log-dir", default=os.path.join("runs", "gradwatch-demo"),
                      help="where to write TensorBoard logs (default: runs/gradwatch-demo)")
    demo.add_argument("--steps", type=_positive_int, default=1500, help="training steps per network (default: 1500)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.set_defaults(func=_demo)

    report = sub.add_parser("report", help="diagnose logged runs from their event files", description=REPORT_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_argument("logdir", metavar="LOGDIR",
                        help="directory holding the runs' event files (searched recursively)")
    report.add_argument("--run", metavar="NAME", help="only this run (its path relative to LOGDIR)")
    report.add_argument("--json", action="store_true", help="print JSON instead of tables")
    report.add_argument("--fail-on", metavar="KINDS", default="", type=_fail_on_kinds,
                        help=f"comma-separated symptom kinds that make the exit status 1: {', '.join(FAIL_ON_KINDS)}")
    report.set_defaults(func=_report)

    plot = sub.add_parser("plot", help="draw the gradient-flow figure from event files", description=PLOT_HELP,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    plot.add_argument("logdir", metavar="LOGDIR", help="directory holding the run's event files")
    plot.add_argument("-o", "--output", required=True, help="PNG file to write")
    plot.add_argument("--run", metavar="NAME", help="the run, when LOGDIR holds several")
    plot.add_argument("--step", type=int, help="the last logged step at or before this one (default: the last)")
    plot.add_argument("--dpi", type=_positive_int, default=100, help="resolution (default: 100)")
    plot.set_defaults(func=_plot)
    return parser


def _fail_on_kinds(text: str) -> list[str]:
    """``--fail-on``'s comma-separated kinds (any case), each one of ``FAIL_ON_KINDS``; a typo is an error, never
    a gate that cannot fire."""
    kinds = [k.strip().lower() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in FAIL_ON_KINDS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown symptom kind {', '.join(repr(k) for k in bad)}; "
                                         f"choose from {', '.join(FAIL_ON_KINDS)} (comma-separated)")
    return kinds


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
