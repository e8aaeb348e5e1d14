"""``amuse-lightning plot <run>``: a PNG of a run's ``metrics.csv``.

Example::

    amuse-lightning fit --config fashion_mnist_resnet
    amuse-lightning plot lightning_logs/fashion_mnist_resnet/version_0    # -> .../metrics.png

``<run>`` is the folder ``CSVLogger`` wrote (``<save_dir>/<name>/version_N``), its
``metrics.csv``, or ``<save_dir>/<name>`` (its latest version). Three panels against the
optimizer step: the validation metric of the averaged model ``x`` (``val_acc``, else
``val_loss``; other ``val_*`` metrics beside it), the training loss (at ``y``), and the
learning rate and ``beta_t`` that ``AmuseCallback`` logs for the first param group
(``amuse/lr_t/group0``, ``amuse/beta_t/group0``; their rows follow ``log_every_n_steps``).
Needs matplotlib (``pip install matplotlib``); the CSV is read with the standard library.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

from amuse_lightning.cli.about import PROG
from amuse_lightning.cli.options import OneLineParser
from amuse_lightning.lightning.errors import ConfigError

__all__ = ["find_metrics", "read_metrics", "run_plot"]

Series = dict[str, tuple[list[float], list[float]]]

LR = "amuse/lr_t/group0"
BETA = "amuse/beta_t/group0"


def find_metrics(path: Path) -> Path:
    """The ``metrics.csv`` that ``path`` names: the file itself, the one in the folder, or the
    one of the folder's latest ``version_N``."""
    if path.is_file():
        return path
    if (path / "metrics.csv").is_file():
        return path / "metrics.csv"
    versions = sorted(
        path.glob("version_*/metrics.csv"),
        key=lambda p: int(m.group(1)) if (m := re.search(r"(\d+)$", p.parent.name)) else -1,
    )
    if versions:
        return versions[-1]
    raise ConfigError(
        f"no metrics.csv in {path}; pass the run's folder (lightning_logs/<name>/version_N, "
        "written by the CSVLogger of the shipped configs) or its metrics.csv"
    )


def read_metrics(path: Path) -> Series:
    """``{column: (steps, values)}`` for every column of a Lightning ``metrics.csv`` (rows
    without a value for a column are skipped for it)."""
    series: Series = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            step = row.get("step")
            if not step:
                continue
            for name, text in row.items():
                if name in ("step", "epoch") or not text:
                    continue
                try:
                    value = float(text)
                except ValueError:
                    continue
                steps, values = series.setdefault(name, ([], []))
                steps.append(float(step))
                values.append(value)
    return series


def _validation_names(series: Series) -> list[str]:
    names = [n for n in series if n.startswith("val_")]
    main = next((n for n in ("val_acc", "val_loss") if n in names), None)
    return [main] if main else names[:1]


def _training_loss(series: Series) -> str | None:
    return next((n for n in ("train_loss", "train_loss_step") if n in series), None)


def plot_metrics(series: Series, output: Path, title: str) -> list[str]:
    """Draw the three panels into ``output`` (PNG); returns the columns drawn."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ConfigError(
            f"'{PROG} plot' needs matplotlib, which is not installed; pip install matplotlib"
        ) from error
    figure = Figure(figsize=(13, 3.8), layout="constrained")
    axes = figure.subplots(1, 3)
    drawn: list[str] = []
    for name in _validation_names(series):
        axes[0].plot(*series[name], marker="o", label=f"{name} of x")
        drawn.append(name)
    axes[0].set_title("validation (averaged model x)")
    loss = _training_loss(series)
    if loss:
        axes[1].plot(*series[loss], color="tab:orange", label=f"{loss} at y")
        drawn.append(loss)
    axes[1].set_title("training loss (at y)")
    if LR in series:
        axes[2].plot(*series[LR], color="tab:green", label="lr_t")
        drawn.append(LR)
    axes[2].set_title("learning rate and beta_t (group 0)")
    axes[2].set_ylabel("lr_t")
    if BETA in series:
        beta_axis = axes[2].twinx()
        beta_axis.plot(*series[BETA], color="tab:purple", linestyle="--", label="beta_t")
        beta_axis.set_ylabel("beta_t")
        beta_axis.legend(loc="lower right")
        drawn.append(BETA)
    for axis in axes:
        axis.set_xlabel("step")
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="best")
    figure.suptitle(title)
    figure.savefig(output, dpi=110)
    return drawn


def run_plot(argv: Sequence[str]) -> int:
    """``amuse-lightning plot <run> [--output PNG]``; returns 0 after writing the PNG."""
    parser = OneLineParser(
        prog=f"{PROG} plot",
        description="Plot a run's metrics.csv: the validation metric of x, the training loss "
        "and AMUSE's lr_t / beta_t against the step, as a PNG.",
    )
    parser.add_argument("run", help="the run's folder (lightning_logs/<name>/version_N) or CSV")
    parser.add_argument(
        "--output", default=None, help="the PNG to write (default: metrics.png beside the CSV)"
    )
    options = parser.parse_args(list(argv))
    metrics = find_metrics(Path(options.run))
    series = read_metrics(metrics)
    if not series:
        raise ConfigError(f"{metrics} holds no metric values yet")
    output = Path(options.output) if options.output else metrics.with_name("metrics.png")
    drawn = plot_metrics(series, output, title=str(metrics.parent))
    missing = [n for n in (LR, BETA) if n not in series]
    note = ""
    if missing:
        note = (f"; no {', '.join(missing)} rows (logged every log_every_n_steps steps by "
                "AmuseCallback)")  # fmt: skip
    print(f"Wrote {output} ({', '.join(drawn) or 'nothing to draw'}){note}", flush=True)
    return 0
