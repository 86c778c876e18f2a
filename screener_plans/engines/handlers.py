"""Small Ignite handlers used by every training bundle.

- ``ProgressLogger``: step, each loss term, lr, steps/s, data-wait share and ETA on the console,
  the same numbers in ``logs/train_log.jsonl`` and TensorBoard (when installed).
- ``CheckpointHandler``: atomic checkpoints every N steps, at the end and on Ctrl-C, keeping the
  last few.
- ``ResumeHandler``: continues from the newest checkpoint with the same schedule and data order.
- ``ModelExporter``: writes the final ``models/model.pt`` atomically, and ``models/training.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from ignite.engine import Events

from screener_plans.device import is_main_process, unwrap
from screener_plans.errors import ScreenerError
from screener_plans.io_utils import atomic_path, sweep_stale_temporaries, write_json
from screener_plans.layout import TRAINING_RECORD
from screener_plans.options import as_bool

logger = logging.getLogger("screener.train")
CKPT_RE = re.compile(r"checkpoint_(\d+)\.pt$")


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class _HandledErrorFilter(logging.Filter):
    """Drops Ignite's "... run is terminating due to exception" lines for a Ctrl-C or a Screener error
    (the former is a clean stop, the latter is reported in one line by the caller), and its
    "Engine run resuming from iteration 0", which precedes ``ResumeHandler``'s own line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from screener_plans.bundle_runner import find_screener_error

        if str(record.msg).startswith("Engine run resuming from iteration"):
            return False
        if "run is terminating due to exception" not in str(record.msg):
            return True
        exc = sys.exc_info()[1]  # the filter runs inside Ignite's except block
        return not (isinstance(exc, KeyboardInterrupt) or (exc is not None and find_screener_error(exc)))


def quiet_handled_errors(engine) -> None:
    """Install ``_HandledErrorFilter`` on the engine's logger (once)."""
    if not any(isinstance(f, _HandledErrorFilter) for f in engine.logger.filters):
        engine.logger.addFilter(_HandledErrorFilter())


class ProgressLogger:
    """Logs training progress every ``every`` steps (console, JSONL, TensorBoard)."""

    def __init__(self, total_steps: int, every: int = 10, log_dir: str | None = None, name: str = "train"):
        self.total, self.every, self.name = int(total_steps), max(1, int(every)), name
        self.log_dir = Path(log_dir) if log_dir else None
        self._sums: dict[str, float] = {}
        self._count = 0
        self._data_time = 0.0
        self._window_start = None
        self._batch_t0 = None
        self._writer = None
        self.history: list[dict] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._batch_started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._batch_completed)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self._close)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._close_on_error)

    def _started(self, engine) -> None:
        self._window_start = time.perf_counter()
        self._start_step = engine.state.iteration
        if self.log_dir is not None and is_main_process():
            self.log_dir.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.log_dir))
            except ImportError:
                logger.info("tensorboard is not installed; logging to %s/train_log.jsonl only", self.log_dir)

    def _batch_started(self, engine) -> None:
        self._batch_t0 = time.perf_counter()

    def _batch_completed(self, engine) -> None:
        if self._batch_t0 is not None:
            self._data_time += time.perf_counter() - self._batch_t0

    def _iteration_completed(self, engine) -> None:
        out = engine.state.output or {}
        for k, v in out.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "lr":
                self._sums[k] = self._sums.get(k, 0.0) + float(v)
        self._count += 1
        step = engine.state.iteration
        if step % self.every and step != self.total:
            return
        now = time.perf_counter()
        elapsed = now - self._window_start
        rate = self._count / elapsed if elapsed > 0 else 0.0
        record = {
            "step": step,
            "total": self.total,
            **{k: v / self._count for k, v in self._sums.items()},
            "lr": out.get("lr"),
            "steps_per_s": rate,
            "data_wait": self._data_time / elapsed if elapsed else 0.0,
            "eta_s": (self.total - step) / rate if rate else None,
            "time": time.time(),
        }
        self.history.append(record)
        self._sums, self._count, self._data_time, self._window_start = {}, 0, 0.0, now
        if not is_main_process():
            return
        terms = " ".join(
            f"{k} {record[k]:.4g}"
            for k in record
            if k not in ("step", "total", "lr", "steps_per_s", "data_wait", "eta_s", "time", "skipped")
        )
        logger.info(
            "%s step %d/%d %s lr %.3g %.2f step/s data-wait %.0f%% ETA %s",
            self.name,
            step,
            self.total,
            terms,
            record["lr"] or 0.0,
            rate,
            100 * record["data_wait"],
            _fmt_eta(record["eta_s"] or 0.0),
        )
        if self.log_dir is not None:
            with open(self.log_dir / "train_log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "total", "time"):
                    self._writer.add_scalar(f"{self.name}/{k}", v, step)

    def _close(self, engine) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None

    def _close_on_error(self, engine, e) -> None:
        self._close(engine)
        raise e


def checkpoint_steps(save_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints in ``save_dir``, oldest first."""
    d = Path(save_dir)
    if not d.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_RE.search(p.name)))


def latest_checkpoint(save_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``save_dir``, or None."""
    found = checkpoint_steps(save_dir)
    return found[-1][1] if found else None


def _sweep_killed_saves(save_dir: Path) -> None:
    """Ignite's atomic ``DiskSaver`` writes ``tmp*`` beside the checkpoints and renames it when
    whole; a save killed mid-write leaves one behind. Only the main process of the one training
    of a stage writes there, so at its start every such file is a leftover."""
    if save_dir.is_dir():
        for p in save_dir.glob("tmp*"):
            if p.is_file():
                p.unlink(missing_ok=True)


class CheckpointHandler:
    """Saves ``objects`` and the trainer every ``every`` steps and when training completes, with
    Ignite's ``Checkpoint`` and an atomic ``DiskSaver``; keeps the newest ``keep``, counting those
    a resumed run found on disk.

    Ctrl-C (SIGINT) also saves: between steps at once, during a step once the step is done, so
    the checkpoint never holds a half-applied update and a re-run resumes where it stopped. A
    second Ctrl-C stops at once without saving.
    """

    def __init__(self, save_dir: str, objects: dict, every: int, keep: int = 2):
        self.save_dir, self.objects, self.every, self.keep = Path(save_dir), objects, int(every), int(keep)
        self._checkpoint = None
        self._in_step = False
        self._interrupted = False
        self._previous_sigint = None
        self._pid = None  # the process that set the handler (forked workers inherit it)

    def attach(self, engine) -> None:
        quiet_handled_errors(engine)
        # after ResumeHandler (attached first), so that the checkpoints it kept are counted
        engine.add_event_handler(Events.STARTED, self._start, engine)
        # a step starts once its batch is in hand: ignite counts the iteration right after
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._step_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._step_completed)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)
        engine.add_event_handler(Events.COMPLETED, self._unwatch_interrupts)

    def _start(self, engine) -> None:
        from ignite.handlers import Checkpoint, DiskSaver

        if is_main_process():
            _sweep_killed_saves(self.save_dir)
        self._checkpoint = Checkpoint(
            {**self.objects, "trainer": engine},
            DiskSaver(str(self.save_dir), atomic=True, require_empty=False),
            n_saved=self.keep,
            global_step_transform=lambda e, _: e.state.iteration,
            filename_pattern="checkpoint_{global_step:08d}.{ext}",
        )
        # Ignite's Checkpoint only knows what it saved itself: hand it the files already there
        self._checkpoint.load_state_dict({"_saved": [(step, p.name) for step, p in checkpoint_steps(self.save_dir)]})
        self._watch_interrupts(engine)

    def save(self, engine) -> Path | None:
        if not is_main_process() or self._checkpoint is None:
            return None
        path = self.save_dir / f"checkpoint_{engine.state.iteration:08d}.pt"
        if not path.exists():  # at the end, the last periodic save is often this very step
            self._checkpoint(engine)
        return path

    # -- Ctrl-C: finish the step, save, stop ------------------------------------------------
    def _watch_interrupts(self, engine) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        self._interrupted = False
        self._pid = os.getpid()
        self._previous_sigint = signal.signal(signal.SIGINT, lambda *_: self._on_sigint(engine))

    def _unwatch_interrupts(self, engine=None) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def _on_sigint(self, engine) -> None:
        if os.getpid() != self._pid:
            return  # a forked data-loader worker: the trainer stops it when it stops
        if self._interrupted or not self._in_step:
            # between steps (waiting for data, logging) the state is whole: save and stop now
            self._stop(engine, save=not self._interrupted)
        self._interrupted = True
        if is_main_process():
            logger.warning(
                "interrupted: stopping after step %d (Ctrl-C again to stop at once, without saving)",
                engine.state.iteration,
            )

    def _step_started(self, engine) -> None:
        self._in_step = True

    def _step_completed(self, engine) -> None:
        self._in_step = False
        if self._interrupted:
            self._stop(engine, save=True)

    def _stop(self, engine, save: bool):
        self._unwatch_interrupts()
        path = self.save(engine) if save else None
        where = f"; checkpoint {path} resumes it" if path is not None else ""
        raise KeyboardInterrupt(f"stopped at step {engine.state.iteration}{where}")


class ResumeHandler:
    """At start, loads the newest checkpoint in ``save_dir`` (if any) into ``objects`` and the trainer.

    ``sampler.start`` is moved past the batches already trained on, so the resumed run draws the
    same samples as an uninterrupted one.
    """

    def __init__(self, save_dir: str, objects: dict, sampler=None, batch_size: int = 1, enabled: bool = True):
        self.save_dir, self.objects, self.sampler = Path(save_dir), objects, sampler
        self.batch_size, self.enabled = int(batch_size), as_bool(enabled, "resume")
        self.resumed_from: Path | None = None

    def attach(self, engine) -> None:
        quiet_handled_errors(engine)
        engine.add_event_handler(Events.STARTED, self.load)

    def load(self, engine) -> None:
        from ignite.handlers import Checkpoint

        if is_main_process():
            sweep_stale_temporaries(self.save_dir)  # temp files of a killed save
            if not self.enabled:
                self._discard_old_checkpoints()
        path = latest_checkpoint(self.save_dir) if self.enabled else None
        if path is None:
            return
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise ScreenerError(
                f"{path}: checkpoint cannot be loaded ({type(e).__name__}); delete it to restart from the previous one"
            ) from None
        self._check_schedule(path, state)
        missing = [name for name in self.objects if name not in state]
        if missing:
            raise ScreenerError(f"{path}: checkpoint has no '{missing[0]}' entry; it was written by another stage")
        try:
            Checkpoint.load_objects(to_load=self.objects, checkpoint=state)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise ScreenerError(
                f"{path}: checkpoint does not match this model/plans ({_first_detail(e)}); "
                "train from scratch with --resume false"
            ) from None
        trainer_state = state["trainer"]
        engine.state.iteration = int(trainer_state["iteration"])
        # Ignite counts an epoch as done only at its end: a mid-epoch resume restarts that epoch
        # at the saved iteration.
        engine.state.epoch = engine.state.iteration // max(1, int(engine.state.epoch_length or 1))
        if self.sampler is not None:
            self.sampler.start = engine.state.iteration * self.batch_size
        self.resumed_from = path
        if is_main_process():
            logger.info("resumed from %s (step %d)", path, engine.state.iteration)

    def _discard_old_checkpoints(self) -> None:
        """Starting over: an older run's checkpoints would be resumed next time (and would
        outrank this run's, whose step numbers restart from 0)."""
        old = (
            [p for p in self.save_dir.glob("checkpoint_*.pt") if CKPT_RE.search(p.name)]
            if self.save_dir.is_dir()
            else []
        )
        for p in old:
            p.unlink(missing_ok=True)
        if old:
            logger.info("not resuming: removed %d checkpoint(s) of an earlier run from %s", len(old), self.save_dir)

    def _check_schedule(self, path: Path, state: dict) -> None:
        """A one-cycle learning-rate schedule cannot be resumed at another length: refuse clearly."""
        saved = state.get("lr_scheduler")
        saved = saved.get("total_steps") if isinstance(saved, dict) else None
        wanted = getattr(self.objects.get("lr_scheduler"), "total_steps", None)
        if saved is not None and wanted is not None and int(saved) != int(wanted):
            raise ScreenerError(
                f"{path}: this stage was started with a {saved}-step learning-rate schedule and this run asks "
                f"for {wanted} steps; a one-cycle schedule cannot be resumed at another length: keep the step "
                f"count, or train from scratch with --resume false"
            )


def _first_detail(error: Exception) -> str:
    """The first informative line of a PyTorch ``load_state_dict`` error (its first line is a header)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in lines if not line.endswith(":")), lines[0] if lines else type(error).__name__)
    return detail if len(detail) <= 200 else detail[:197] + "..."


class ModelExporter:
    """On completion writes ``model.state_dict()`` to ``path`` atomically (rank 0 only)."""

    def __init__(
        self, path: str, model: torch.nn.Module, config: dict | None = None, config_name: str = "model_config.json"
    ):
        self.path, self.model = Path(path), model
        self.config, self.config_name = config, config_name

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self.export)

    def export(self, engine) -> None:
        if not is_main_process():
            return
        with atomic_path(self.path, suffix=".pt") as tmp:
            torch.save(unwrap(self.model).state_dict(), tmp)
        if self.config is not None:
            write_json(self.path.parent / self.config_name, self.config)
        # what a published model's card reports as its training
        write_json(self.path.parent / TRAINING_RECORD, {"steps": int(engine.state.iteration)})
        logger.info("saved %s", os.fspath(self.path))
