"""Plot GRPO/SAPO training curves from one or more runs' ``trainer_state.json`` (several runs overlaid).

    python -m trl_sapo.tools.plot_training outputs/sapo outputs/grpo --labels SAPO GRPO --smooth 0.6 --output curves.png

Each path is an output folder (its ``trainer_state.json``, else its newest ``checkpoint-*/trainer_state.json``), a
checkpoint folder, or a ``trainer_state.json`` file. Panels: reward (mean ± std band), accuracy reward, KL,
completion length, and the SAPO gate diagnostics (``sapo/gate_mean``, ``sapo/grad_weight_mean``,
``sapo/soft_clip_ratio`` next to GRPO's ``clip_ratio/region_mean``, ``sapo/ratio_max``). Panels no run has data for
are left out. Needs matplotlib (``pip install 'trl-sapo[plots]'``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trl_sapo.tools import import_pyplot

plt = import_pyplot()

LogHistory = list[dict]


@dataclass(frozen=True)
class Series:
    """One metric of a panel: the first log key matching ``keys`` (exact names or regexes), drawn with ``style``."""

    keys: tuple[str, ...]
    suffix: str = ""
    style: dict = field(default_factory=dict)
    band: str | None = None  # key of a ±std band around the line


@dataclass(frozen=True)
class Panel:
    title: str
    ylabel: str
    series: tuple[Series, ...]
    hline: float | None = None  # reference value (e.g. the on-policy gradient weight 1)


PANELS: tuple[Panel, ...] = (
    Panel("reward", "reward (mean ± std)", (Series(("reward",), band="reward_std"),)),
    Panel(
        "accuracy reward",
        "accuracy reward (mean)",
        (Series(("rewards/accuracy_reward/mean", r"re:^rewards/.*accuracy.*/mean$")),),
    ),
    Panel("KL to reference", "kl", (Series(("kl",)),)),
    Panel("completion length", "mean length (tokens)", (Series(("completions/mean_length",)),)),
    Panel("sapo/gate_mean", "mean gate f(r)   (on-policy: 2/τ)", (Series(("sapo/gate_mean",)),)),
    Panel("sapo/grad_weight_mean", "mean gradient weight w", (Series(("sapo/grad_weight_mean",)),), hline=1.0),
    Panel(
        "clipped token share",
        "share of tokens",
        (
            Series(("sapo/soft_clip_ratio",), " soft_clip_ratio (w < 0.5)"),
            Series(("clip_ratio/region_mean",), " clip_ratio/region_mean", {"ls": "--"}),
        ),
        hline=0.0,
    ),
    Panel("sapo/ratio_max", "max ratio r = π_θ/π_old", (Series(("sapo/ratio_max",)),), hline=1.0),
)
PANEL_TITLES = tuple(panel.title for panel in PANELS)


def resolve_trainer_state(path: str | Path) -> Path:
    """The ``trainer_state.json`` a path designates (file, output folder, or checkpoint folder)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist.")
    if path.is_file():
        return path
    if (path / "trainer_state.json").is_file():
        return path / "trainer_state.json"
    checkpoints = [
        p
        for p in path.glob("checkpoint-*")
        if re.fullmatch(r"checkpoint-\d+", p.name) and (p / "trainer_state.json").is_file()
    ]
    if checkpoints:
        return max(checkpoints, key=lambda p: int(p.name.split("-")[1])) / "trainer_state.json"
    raise FileNotFoundError(
        f"No trainer_state.json in {path} nor in a checkpoint-* folder inside it. Pass a training output_dir, a "
        "checkpoint folder or the json file itself (Trainer writes it with each checkpoint and with trainer.save_state())."
    )


def load_log_history(path: str | Path) -> LogHistory:
    """``log_history`` (list of per-logging-step dicts) from a trainer_state.json, output folder or checkpoint folder."""
    state_file = resolve_trainer_state(path)
    try:
        state = json.loads(state_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{state_file} is not valid JSON: {err}") from err
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise ValueError(f"{state_file} has no 'log_history' list; is it a transformers trainer_state.json?")
    return state["log_history"]


def _match_key(keys: Sequence[str], available: set[str]) -> str | None:
    for key in keys:
        if key.startswith("re:"):
            matches = sorted(k for k in available if re.search(key[3:], k))
            if matches:
                return matches[0]
        elif key in available:
            return key
    return None


def extract(history: LogHistory, key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key`` over the training log entries that have it (non-numeric values skipped)."""
    steps, values = [], []
    for entry in history:
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "step" in entry:
            steps.append(float(entry["step"]))
            values.append(float(value))
    return steps, values


def ema(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard-style debiased exponential moving average; NaNs pass through without updating the average."""
    out, last, n = [], 0.0, 0
    for v in values:
        if math.isnan(v):
            out.append(v)
            continue
        last, n = last * weight + (1 - weight) * v, n + 1
        out.append(last / (1 - weight**n))
    return out


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` finite values."""
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1) : i + 1] if not math.isnan(v)]
        out.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return out


def make_smoother(smooth: float = 0.0, window: int = 1) -> Callable[[Sequence[float]], list[float]]:
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"smooth is an EMA weight in [0, 1), got {smooth}.")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}.")
    if smooth > 0 and window > 1:
        raise ValueError("Use either smooth (EMA) or window (moving average), not both.")
    if smooth > 0:
        return lambda values: ema(values, smooth)
    if window > 1:
        return lambda values: moving_average(values, window)
    return list


def _has_isolated_points(values: Sequence[float]) -> bool:
    """Whether some finite value has no finite neighbour (a single-step run, or a metric logged once per rollout)."""
    finite = [math.isfinite(v) for v in values]
    return any(
        here and not (i > 0 and finite[i - 1]) and not (i + 1 < len(finite) and finite[i + 1])
        for i, here in enumerate(finite)
    )


def make_training_figure(
    runs: Mapping[str, LogHistory], smooth: float = 0.0, window: int = 1, title: str | None = None
) -> plt.Figure:
    """Grid of the ``PANELS`` that at least one run has data for; one colour per run, line labels = run labels.

    ``smooth`` is an EMA weight in [0, 1) (0 = raw), ``window`` a trailing moving-average length; with either the
    raw curve is drawn faintly behind the smoothed one (label starting with "_", so legends skip it).
    """
    if not runs:
        raise ValueError("No runs to plot.")
    smoother = make_smoother(smooth, window)
    available = {label: {k for entry in history for k in entry} for label, history in runs.items()}
    planned = []
    for panel in PANELS:
        lines = []
        for label in runs:
            for series in panel.series:
                key = _match_key(series.keys, available[label])
                if key is not None and extract(runs[label], key)[0]:
                    lines.append((label, series, key))
        if lines:
            planned.append((panel, lines))
    if not planned:
        keys = sorted(set().union(*available.values()))
        raise ValueError(f"None of the plotted metrics are in the logs. Logged keys: {keys}")

    ncols = min(4, len(planned))
    nrows = math.ceil(len(planned) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), squeeze=False, constrained_layout=True)
    colors = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(runs)}
    for ax, (panel, lines) in zip(axes.flat, planned):
        for label, series, key in lines:
            steps, values = extract(runs[label], key)
            smoothed = smoother(values)
            style = {"color": colors[label], "lw": 1.8, **series.style}
            if _has_isolated_points(values):  # one rollout = one logged point: a line alone would draw nothing
                style |= {"marker": "o", "markersize": 4}
            if smooth > 0 or window > 1:
                ax.plot(steps, values, **{**style, "lw": 0.8, "alpha": 0.3}, label=f"_raw {label}")
            ax.plot(steps, smoothed, label=f"{label}{series.suffix}", **style)
            if series.band and series.band in available[label]:
                band_steps, stds = extract(runs[label], series.band)
                if band_steps == steps:
                    stds = smoother(stds)
                    lower = [m - s for m, s in zip(smoothed, stds)]
                    upper = [m + s for m, s in zip(smoothed, stds)]
                    ax.fill_between(steps, lower, upper, color=colors[label], alpha=0.15, lw=0)
        if panel.hline is not None:
            ax.axhline(panel.hline, color="0.5", lw=0.8, ls=":")
        ax.set_title(panel.title, fontsize=10.5)
        ax.set_xlabel("step")
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", useOffset=False)  # show 0.9998, not "+1" and -0.0002
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        if len(lines) > 1 or any(series.suffix for _, series, _ in lines):
            ax.legend(fontsize=7.5)
    for ax in list(axes.flat)[len(planned) :]:
        ax.remove()
    smoothing = f"EMA {smooth:g}" if smooth > 0 else (f"moving average {window}" if window > 1 else "raw")
    fig.suptitle(title or f"Training curves ({smoothing})", fontsize=12)
    return fig


def _default_label(path: Path) -> str:
    path = path.resolve()
    if path.is_file():
        path = path.parent
    return f"{path.parent.name}/{path.name}" if path.name.startswith("checkpoint-") else path.name


def make_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m trl_sapo.tools.plot_training``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="output dirs, checkpoint dirs or trainer_state.json files")
    parser.add_argument("--labels", nargs="+", default=None, help="one legend label per path (default: folder names)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--smooth", type=float, default=0.0, help="EMA weight in [0, 1), e.g. 0.6 (default: raw)")
    group.add_argument("--window", type=int, default=1, help="trailing moving-average window in logged steps")
    parser.add_argument("--title", default=None)
    parser.add_argument("--output", type=Path, default=Path("training_curves.png"), help="image file (.png/.svg/.pdf)")
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    parser = make_parser()
    args = parser.parse_args(argv)
    plt.switch_backend("Agg")  # headless rendering; importing this module leaves the backend alone (notebooks)
    labels = args.labels or [_default_label(p) for p in args.paths]
    if len(labels) != len(args.paths):
        parser.error(f"--labels has {len(labels)} names for {len(args.paths)} paths.")
    if len(set(labels)) != len(labels):
        parser.error(f"Labels must be unique, got {labels}; pass --labels.")
    try:
        runs = {label: load_log_history(path) for label, path in zip(labels, args.paths)}
        fig = make_training_figure(runs, smooth=args.smooth, window=args.window, title=args.title)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=120)
    plt.close(fig)
    print(f"wrote {args.output}")
    return args.output


if __name__ == "__main__":
    main()
