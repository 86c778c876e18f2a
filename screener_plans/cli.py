"""The ``screener`` command (python-fire).

Every user-caused failure is printed as one line, ``screener: error: ...``, with exit code 2.
"""

from __future__ import annotations

import json
import logging
import sys

from screener_plans.errors import ScreenerError


def _echo(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Screener:
    """Unsupervised pathology screening in 3D CT.

    Typical use:  screener plan-and-train DATA_DIR RUN_DIR;  screener predict RUN_DIR INPUT OUT.
    """

    def make_synthetic(self, out_dir, cases: int = 24, seed: int = 0, test_cases: int | None = None):
        """Write a synthetic CT data set: OUT_DIR/train (unlabeled), OUT_DIR/test/{images,labels}."""
        from screener_plans.data.synthetic import make_synthetic_dataset

        kwargs = {"cases": int(cases), "seed": int(seed)}
        if test_cases is not None:
            kwargs["test_cases"] = int(test_cases)
        info = make_synthetic_dataset(out_dir, **kwargs)
        _echo(f"wrote synthetic data set to {out_dir}")
        return _summary(info)

    def plan(self, data_dir, run_dir, device: str = "auto", memory_gb: float | None = None, skip_bad: bool = False,
             workers: int = 0, seed: int = 0, set=None):  # noqa: A002 - `--set key=value` is the public flag
        """Fingerprint DATA_DIR and write RUN_DIR/fingerprint.json and RUN_DIR/plans.json.

        --device auto|cpu|cuda, --memory-gb G, --set key=value (repeatable), --skip-bad.
        """
        from screener_plans.planning.planner import plan

        plans = plan(data_dir, run_dir, device=device, memory_gb=memory_gb, overrides=set, skip_bad=skip_bad,
                     workers=workers, seed=seed)
        for s in plans["dataset"].get("skipped", []):
            _echo(f"skipped {s['path']}: {s['problem']}")
        _echo(f"planned {plans['dataset']['n_cases']} cases -> {run_dir}/plans.json "
              f"(preset {plans['preset']}, device {plans['device']}, spacing {plans['spacing']}, "
              f"crop {plans['crop_size']}, batch {plans['batch_size']}, window {plans['intensity']['window']})")

    def preprocess(self, run_dir, workers: int = 0, data_dir=None):
        """Preprocess the planned cases into RUN_DIR/preprocessed (resumable)."""
        from screener_plans.data.preprocess import preprocess

        summary = preprocess(run_dir, data_dir=data_dir, workers=workers)
        for e in summary["errors"]:
            _echo(f"skipped {e['path']}: {e['problem']}")
        _echo(f"preprocessed {summary['done']} case(s), {summary['cached']} already cached, "
              f"{len(summary['errors'])} failed")

    def evaluate(self, pred_dir, labels_dir, mask_dir=None, output=None):
        """Print AUROC, AUROC@FPR0.3 and AUPRO@FPR0.3 (pooled and per case) as JSON."""
        from screener_plans.metrics import evaluate

        result = evaluate(pred_dir, labels_dir, mask_dir=mask_dir)
        text = json.dumps(result, indent=2)
        if output:
            from screener_plans.io_utils import write_text

            write_text(output, text + "\n")
        print(text)


def _summary(info):
    if isinstance(info, dict):
        keep = {k: v for k, v in info.items() if not isinstance(v, (list, dict))}
        return json.dumps(keep)
    return info


def _collect_repeated(argv: list[str], flag: str) -> tuple[list[str], list[str]]:
    """Pull every ``--flag value`` / ``--flag=value`` out of argv (fire keeps only the last)."""
    values, rest, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a == flag and i + 1 < len(argv):
            values.append(argv[i + 1])
            i += 2
            continue
        if a.startswith(flag + "="):
            values.append(a[len(flag) + 1:])
        else:
            rest.append(a)
        i += 1
    return values, rest


def main(argv: list[str] | None = None) -> int:
    import fire

    argv = list(sys.argv[1:] if argv is None else argv)
    sets, argv = _collect_repeated(argv, "--set")
    if sets:
        argv += ["--set", json.dumps(sets)]
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        fire.Fire(Screener(), command=argv, name="screener")
    except ScreenerError as e:
        _echo(f"screener: error: {e}")
        return 2
    except KeyboardInterrupt:
        _echo("screener: interrupted")
        return 130
    except fire.core.FireExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
