"""A run's metric history: `metrics.csv` and `curves.png` in the output folder (train_url).

metrics.csv has one row per logged training step (kind `train`: step, epoch = complete passes
over the training data as in the checkpoints, every loss term, learning rate, images/s) and one
per evaluation (kind `eval`: PSNR, SSIM, CIEDE2000 and the same metrics of the input against
the target, `input_*`). curves.png plots the loss terms and the validation metrics against the
step, the input's values as a dashed line: the model is worth something where its line is
above (PSNR, SSIM) or below (CIEDE2000) the dashed one.

A resumed run reads the rows its earlier attempts wrote, keeps those up to the step it resumes
from and appends: a step is never listed twice. Both files are replaced atomically, so the
uploader never sends half a file."""
from __future__ import annotations

import csv
import io
import logging
import math
import os
from typing import Dict, Iterable, List, Optional

log = logging.getLogger(__name__)

CSV_NAME = "metrics.csv"
PLOT_NAME = "curves.png"
METRICS = ("psnr", "ssim", "ciede2000")
# Columns in this order; loss terms (named by the recipe) go between `epoch` and `lr`.
LEADING = ("kind", "step", "epoch")
TRAILING = ("lr", "images_per_second") + METRICS + tuple("input_" + m for m in METRICS)
TITLES = {"psnr": "PSNR (dB, higher is better)", "ssim": "SSIM (higher is better)",
          "ciede2000": "CIEDE2000 (lower is better)"}


def _number(text: str):
    if text in ("", None):
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "%.6g" % value if math.isfinite(value) else str(value)
    return str(value)


class MetricsHistory:
    """Rows of metrics.csv in memory; `log_step` / `log_eval` add one and rewrite the CSV,
    `plot` rewrites curves.png. `start_step`: rows after it (an earlier attempt's steps that
    this run trains again) are dropped."""

    def __init__(self, output_dir: str, start_step: int = 0):
        self.csv_path = os.path.join(output_dir, CSV_NAME)
        self.plot_path = os.path.join(output_dir, PLOT_NAME)
        self.rows: List[Dict[str, object]] = []
        self.terms: List[str] = []
        self._plot_failed = False
        self._written: Optional[List[str]] = None  # the header of the file as last written
        if os.path.isfile(self.csv_path):
            self._read(int(start_step))

    def _read(self, start_step: int) -> None:
        try:
            with open(self.csv_path, newline="") as f:
                reader = csv.DictReader(f)
                for raw in reader:
                    row = {k: _number(v) for k, v in raw.items() if k}
                    if isinstance(row.get("step"), int) and row["step"] <= start_step:
                        self.rows.append(row)
                fields = reader.fieldnames or []
        except (OSError, csv.Error, UnicodeDecodeError) as err:
            log.warning("%s is unreadable (%s): starting a new one", self.csv_path, err)
            self.rows = []
            return
        self.terms = [f for f in fields if f not in LEADING and f not in TRAILING]
        dropped = "" if not self.rows else " (rows up to step %d)" % start_step
        log.info("continuing %s%s", self.csv_path, dropped)

    def _add(self, row: Dict[str, object]) -> None:
        if not self.rows or (self.rows[-1].get("step") or 0) < row["step"]:
            self.rows.append(row)  # a later step: nothing to replace or reorder
            return
        # One row per (kind, step): an evaluation repeated after an interrupt replaces its row.
        self.rows = [r for r in self.rows
                     if (r.get("kind"), r.get("step")) != (row["kind"], row["step"])]
        self.rows.append(row)
        self.rows.sort(key=lambda r: (r.get("step") or 0, r.get("kind") != "train"))

    def log_step(self, record: dict, epoch: int) -> None:
        """A ProgressLogger record (step, terms, lr, images_per_second)."""
        terms = dict(record.get("terms") or {})
        for name in terms:
            if name not in self.terms:
                self.terms.append(name)
        row = {"kind": "train", "step": int(record["step"]), "epoch": int(epoch),
               "lr": record.get("lr"), "images_per_second": record.get("images_per_second")}
        row.update(terms)
        appended = (self.rows and self._written == self.columns
                    and (self.rows[-1].get("step") or 0) < row["step"])
        self._add(row)
        if appended:
            # The common case: one more line (a long run's file is not rewritten every log).
            with open(self.csv_path, "a", newline="") as f:
                f.write(self._line(row))
        else:
            self.write()

    def log_eval(self, step: int, epoch: int, metrics: dict) -> None:
        """An evaluate() result: its metrics and reference_* (the input's) values."""
        row = {"kind": "eval", "step": int(step), "epoch": int(epoch)}
        for m in METRICS:
            row[m] = metrics.get(m)
            row["input_" + m] = metrics.get("reference_" + m)
        self._add(row)
        self.write()
        self.plot()

    @property
    def columns(self) -> List[str]:
        return list(LEADING) + self.terms + list(TRAILING)

    def _line(self, row: Dict[str, object]) -> str:
        buf = io.StringIO()
        csv.writer(buf).writerow([_cell(row.get(c)) for c in self.columns])
        return buf.getvalue()

    def write(self) -> str:
        tmp = os.path.join(os.path.dirname(self.csv_path), ".%s.tmp" % CSV_NAME)
        os.makedirs(os.path.dirname(self.csv_path), exist_ok=True)
        columns = self.columns
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerow(columns)
            f.write("".join(self._line(row) for row in self.rows))
        os.replace(tmp, self.csv_path)
        self._written = columns
        return self.csv_path

    def series(self, kind: str, column: str) -> Iterable[tuple]:
        pts = [(r["step"], r.get(column)) for r in self.rows if r.get("kind") == kind]
        return [(s, v) for s, v in pts if isinstance(v, (int, float)) and math.isfinite(v)]

    def plot(self) -> Optional[str]:
        """Rewrite curves.png; None (and one warning) when matplotlib is missing."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            if not self._plot_failed:
                log.warning("matplotlib is not installed (pip install -r requirements.txt): "
                            "%s is written, %s is not", CSV_NAME, PLOT_NAME)
            self._plot_failed = True
            return None
        # Figure + Agg canvas, not pyplot: no global state, safe beside the training threads.
        fig = Figure(figsize=(12, 8), dpi=100)
        FigureCanvasAgg(fig)
        axes = fig.subplots(2, 2)
        ax = axes[0][0]
        for term in self.terms:
            pts = self.series("train", term)
            if pts:
                ax.plot(*zip(*pts), label=term)
        ax.set_title("training loss terms")
        if any(v > 0 for term in self.terms for _, v in self.series("train", term)):
            ax.set_yscale("log")
        for ax, metric in zip([axes[0][1], axes[1][0], axes[1][1]], METRICS):
            pts = self.series("eval", metric)
            if pts:
                ax.plot(*zip(*pts), marker="o", label="model")
            ref = self.series("eval", "input_" + metric)
            if ref:
                ax.plot(*zip(*ref), linestyle="--", color="gray", label="input")
            ax.set_title("validation " + TITLES[metric])
        for ax in [a for row in axes for a in row]:
            ax.set_xlabel("step")
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", fontsize="small")
        fig.tight_layout()
        tmp = os.path.join(os.path.dirname(self.plot_path), ".%s.tmp.png" % PLOT_NAME[:-4])
        fig.savefig(tmp, format="png")
        os.replace(tmp, self.plot_path)
        return self.plot_path
