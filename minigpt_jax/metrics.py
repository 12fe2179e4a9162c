"""Where a run's numbers go: a tqdm bar, workdir/metrics.jsonl, TensorBoard, Weights & Biases
when asked, and a loss plot."""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Any

import tqdm

from minigpt_jax import wandb_sink
from minigpt_jax.errors import UsageError
from minigpt_jax.files import atomic_write_bytes

METRICS_FILE = "metrics.jsonl"


def _summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch when it
    is installed (2.5-4 s here) only to accept torch tensors, and we log Python numbers."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, which it handles
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """Appends one JSON line per record and mirrors scalars to TensorBoard, the terminal and,
    when the config names a train.wandb_project, a wandb run. A context manager: leaving it
    closes everything, and an exception marks the wandb run failed.

    Only the process that owns the run's files (process 0) creates one with enabled=True.
    """

    def __init__(
        self,
        workdir: str | pathlib.Path,
        *,
        total: int,
        resume_step: int | None = None,
        enabled: bool = True,
        started: float | None = None,
        config: dict | None = None,
    ):
        """A fresh run starts empty records. A resumed run keeps those of steps <= resume_step
        and drops later ones (it redoes them), so its records equal an uninterrupted run's.
        Each record gets `time` (unix seconds) and `elapsed_s`: seconds since this process
        started the run (perf_counter `started`), plus the last kept record's, across resumes.
        config (config.json's content) goes to TensorBoard as text and to wandb as its config."""
        initial = -1 if resume_step is None else resume_step
        self.enabled, self.total = enabled, total
        self.path = pathlib.Path(workdir) / METRICS_FILE
        self._file = self._tb = self._wandb = None
        self._started = time.perf_counter() if started is None else started
        self._elapsed_before = 0.0
        if enabled:
            kept = [r for r in read_metrics(workdir) if r["step"] <= initial]
            self._elapsed_before = max((r.get("elapsed_s", 0.0) for r in kept), default=0.0)
            if config and config.get("train", {}).get("wandb_project"):
                # Before a file changes: a wandb that cannot start (no login) fails the run.
                self._wandb = wandb_sink.WandbSink(workdir, config, resume=resume_step is not None)
            atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
            self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()
            SummaryWriter = _summary_writer_class()  # deferred: slow import, process 0 only

            # purge_step hides events the interrupted run logged past the resume point.
            self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tb"), purge_step=initial + 1)
            if config is not None:
                self.write_text("config", json.dumps(config, indent=2), 0)
        # On a terminal the bar shows progress; elsewhere (CI, logs) plain lines do.
        self.interactive = enabled and sys.stderr.isatty()
        self.bar = tqdm.tqdm(
            total=total,
            initial=max(initial, 0),
            disable=not self.interactive,
            dynamic_ncols=True,
            unit="it",
        )

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """kind is 'train' or 'eval'; values are plain Python numbers."""
        if not self.enabled:
            return
        elapsed = self._elapsed_before + time.perf_counter() - self._started
        record = {"kind": kind, "step": step, **values, "time": time.time(), "elapsed_s": elapsed}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        scalars = {
            f"{kind}/{name}": value
            for name, value in values.items()
            if isinstance(value, (int, float)) and math.isfinite(value)
        }
        for tag, value in scalars.items():
            self._tb.add_scalar(tag, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step)
        if kind == "train":
            self.bar.set_postfix_str(f"loss {values['loss']:.4f}", refresh=False)
            # The same line on a terminal (above the bar) and off it (CI, nohup, a sweep's log):
            # where the run is, and how long the rest takes at the last interval's pace.
            eta = max(self.total - step, 0) * values["ms_per_iter"] / 1000
            self.log(
                f"step {step}/{self.total}: loss {values['loss']:.4f}, lr {values['lr']:.4e}, "
                f"{values['ms_per_iter']:.1f} ms/step, {values['tokens_per_s']:.0f} tok/s, "
                f"grad norm {values['grad_norm']:.3f}, elapsed {duration(elapsed)}, "
                f"ETA {duration(eta)}"
            )
        else:
            self.log(f"step {step}: {describe_eval(values)}")

    def write_samples(self, step: int, text: str) -> None:
        """workdir/samples/step_N.txt and a TensorBoard text entry: what the model writes now."""
        if not self.enabled:
            return
        directory = self.path.parent / SAMPLES_DIR
        directory.mkdir(exist_ok=True)
        atomic_write_bytes(directory / f"step_{step:06d}.txt", text.encode())
        self.write_text("samples", text, step)

    def write_text(self, tag: str, text: str, step: int) -> None:
        """A TensorBoard text entry (the samples, the run's config)."""
        if self.enabled:  # Markdown there: four spaces of indent show the text verbatim
            self._tb.add_text(tag, "\n".join("    " + line for line in text.split("\n")), step)

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def log(self, message: str) -> None:
        if self.enabled:
            tqdm.tqdm.write(message, file=sys.stderr if self.interactive else sys.stdout)

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, exc_type: type | None, *_: Any) -> None:
        self.close(failed=exc_type is not None)

    def close(self, failed: bool = False) -> None:
        """failed: the run ended by an exception, which the wandb run records."""
        self.bar.close()
        if self._file is not None:
            self._file.close()
            self._tb.close()
        if self._wandb is not None:
            self._wandb, sink = None, self._wandb
            sink.close(failed)


SAMPLES_DIR = "samples"


def duration(seconds: float) -> str:
    """'1:02:03' or '2:03': hours only when there are any."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def describe_eval(r: dict) -> str:
    """One line for an eval's results; data without a val split has a train estimate only."""
    line = f"train loss {r['train_loss']:.4f}"
    if "val_loss" in r:
        line += (
            f", val loss {r['val_loss']:.4f}, full val {r['val_loss_full']:.4f} "
            f"({r['val_bpc']:.4f} bits/char)"
        )
    return line


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
    """The records of workdir/metrics.jsonl; a line cut short by a killed process is skipped, a
    damaged one (not UTF-8, not a record) is a UsageError naming it: a resume would drop it."""
    path = pathlib.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as e:
        raise UsageError(f"cannot read {path} ({e.strerror}); check its permissions") from None
    records = []
    for n, line in enumerate(lines, 1):
        cut = n == len(lines)  # after the last newline: empty, or what a kill left
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            if cut:
                continue
            why = f"is not UTF-8 (byte {e.start})"
        else:
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                continue  # a line cut short by a killed process (or an empty one)
            if (
                isinstance(record, dict)
                and "kind" in record
                and isinstance(record.get("step"), int)
            ):
                records.append(record)
                continue
            why = "is not a record (a JSON object with kind and step)"
        raise UsageError(
            f"{path} line {n} {why}: the file is damaged; fix or delete that line, or move the "
            "file aside, and run again"
        )
    return records


def plot_losses(
    workdir: str | pathlib.Path, tokens_per_step: int | None = None
) -> pathlib.Path | None:
    """workdir/loss.png: train (per log line) and eval losses against step (tokens on the top
    axis when tokens_per_step is known), and the learning rate on a second y axis."""
    records = read_metrics(workdir)
    if not records:
        return None
    return save_figure(loss_figure(records, tokens_per_step), pathlib.Path(workdir) / "loss.png")


def loss_figure(records: list[dict], tokens_per_step: int | None = None) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    if train:
        ax.plot(
            [r["step"] for r in train], [r["loss"] for r in train], lw=0.8, label="train (batch)"
        )
    for key in ("train_loss", "val_loss", "val_loss_full"):
        points = [(r["step"], r[key]) for r in evals if key in r]
        if points:
            ax.plot(*zip(*points), marker="o", ms=3, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.grid(alpha=0.3)
    if tokens_per_step:
        per_step = tokens_per_step / 1e6
        top = ax.secondary_xaxis("top", functions=(lambda s: s * per_step, lambda t: t / per_step))
        top.set_xlabel("tokens (millions)")
    if train:
        lr_ax = ax.twinx()
        lr_ax.plot([r["step"] for r in train], [r["lr"] for r in train], "k:", lw=1, label="lr")
        lr_ax.set_ylabel("learning rate")
        lr_ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.1e}"))
        lr_ax.set_ylim(bottom=0)
        handles = [h for a in (ax, lr_ax) for h in a.get_legend_handles_labels()[0]]
        ax.legend(handles=handles, fontsize=8, loc="center right")
    else:
        ax.legend(fontsize=8)
    return fig


def save_figure(fig: Any, out: pathlib.Path) -> pathlib.Path:
    """Saves and closes a matplotlib figure atomically (a temp file, then a rename)."""
    import matplotlib.pyplot as plt

    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(out)
    return out
