"""Find Screener's MONAI bundles and run their workflows in-process (what `screener train` does)."""

from __future__ import annotations

import os
from pathlib import Path

from screener_plans.errors import ScreenerError
from screener_plans.layout import checkpoint_dir, model_path, plans_file, stage_dir
from screener_plans.log_setup import root_logger_kept

STAGE_BUNDLES = {"descriptor": "screener_descriptor", "condition": "screener_condition", "density": "screener_density"}


def stage_started(run_dir, stage: str) -> bool:
    """Whether a stage of the run has a model or a checkpoint (trained, or training begun)."""
    return model_path(run_dir, stage).exists() or any(checkpoint_dir(run_dir, stage).glob("checkpoint_*.pt"))


def bundles_root() -> Path:
    """The bundle configs: ``$SCREENER_BUNDLES``, the ``bundles/`` folder of a source checkout
    (editable install), or the copy a wheel carries as package data (``screener_plans/bundles``)."""
    env = os.environ.get("SCREENER_BUNDLES")
    package = Path(__file__).resolve().parent
    candidates = [Path(env)] if env else []
    candidates += [package.parent / "bundles", package / "bundles"]
    for c in candidates:
        if (c / "screener_descriptor" / "configs").is_dir():
            return c
    raise ScreenerError(
        f"Screener's bundle configs were not found (looked in {', '.join(map(str, candidates))}); "
        "reinstall screener (pip install .) or set SCREENER_BUNDLES to a bundles folder"
    )


def bundle_dir(name: str) -> Path:
    d = bundles_root() / name
    if not (d / "configs").is_dir():
        raise ScreenerError(f"{d}: bundle not found")
    return d


def find_screener_error(exc: BaseException) -> ScreenerError | None:
    """The ScreenerError behind a MONAI config-evaluation error, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ScreenerError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def run_bundle(name: str, config: str = "train.yaml", **overrides) -> None:
    """``python -m monai.bundle run`` for one of Screener's bundles, with ``overrides``."""
    import signal
    import threading
    import warnings

    from monai.bundle import run

    d = bundle_dir(name)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    # MONAI warns that configs run code; these are Screener's own shipped bundles.
    warnings.filterwarnings("ignore", message="parsing config_file")
    # a training run that fails leaves its Ctrl-C handler (CheckpointHandler) behind: put the
    # caller's back, for callers that go on (notebooks, scripts)
    main = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main else None
    try:
        with root_logger_kept():
            run(
                config_file=str(d / "configs" / config),
                meta_file=str(d / "configs" / "metadata.json"),
                logging_file=str(d / "configs" / "logging.conf"),
                **overrides,
            )
    except Exception as e:
        found = find_screener_error(e)
        if found is not None:
            raise found from None
        raise
    finally:
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)


def train_stage(
    run_dir,
    stage: str,
    max_steps=None,
    device=None,
    condition=None,
    density=None,
    resume: bool = True,
    features=None,
    intensity_prior=None,
) -> Path:
    """Train one stage through its bundle; returns the path of its ``models/model.pt``."""
    if stage not in STAGE_BUNDLES:
        raise ScreenerError(f"--stage must be one of {', '.join(STAGE_BUNDLES)}, got {stage!r}")
    run_dir = Path(run_dir)
    plans = plans_file(run_dir)
    if not plans.exists():
        raise ScreenerError(f"{plans}: plans file not found (run `screener plan DATA_DIR {run_dir}` first)")
    extra = (
        {"condition": condition, "density": density, "features": features, "intensity_prior": intensity_prior}
        if stage == "density"
        else {}
    )
    run_bundle(
        STAGE_BUNDLES[stage],
        plans_file=str(plans),
        output_dir=str(stage_dir(run_dir, stage)),
        max_steps=max_steps,
        device=device,
        resume=resume,
        **extra,
    )
    return model_path(run_dir, stage)
