"""The ``screener`` command (python-fire).

Every user-caused failure is printed as one line, ``screener: error: ...``, with exit code 2.
"""

from __future__ import annotations

import json
import sys

from screener_plans.errors import ScreenerError
from screener_plans.io_utils import remove_dirs_left_empty
from screener_plans.layout import plans_file
from screener_plans.log_setup import log_to_stderr, root_logger_kept
from screener_plans.options import as_bool, as_number, check_device


def _echo(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Screener:
    """Unsupervised pathology screening in 3D CT.

    Typical use:  screener plan-and-train DATA_DIR RUN_DIR;  screener predict RUN_DIR INPUT OUT.
    """

    def make_synthetic(
        self,
        out_dir,
        cases: int = 24,
        seed: int = 0,
        test_cases: int | None = None,
        overwrite: bool = False,
        family: str = "standard",
    ):
        """Write a synthetic CT data set: OUT_DIR/train (unlabeled), OUT_DIR/test/{images,labels}.

        Args:
            out_dir: folder to write; give OUT_DIR/train to `plan`, OUT_DIR/test/images to `predict`.
            cases: number of scans in all.
            seed: data seed (the same seed writes the same scans).
            test_cases: scans in the labelled test split (default: a quarter).
            overwrite: true|false: replace another synthetic data set already in OUT_DIR.
            family: standard|shifted: the phantom family ("shifted": other lesion contrasts and
                sizes, slice thickness, noise, organ shapes and contrast phases; the quality
                benchmark's unseen test set).
        """
        from screener_plans.synthetic.phantoms import make_synthetic_dataset

        # counts are checked by make_synthetic_dataset, before anything is written
        info = make_synthetic_dataset(
            out_dir,
            cases=cases,
            seed=seed,
            test_cases=test_cases,
            overwrite=as_bool(overwrite, "overwrite"),
            family=family,
        )
        _echo(f"synthetic data set ready in {out_dir}")
        return _summary(info)

    def plan(
        self,
        data_dir,
        run_dir,
        device: str = "auto",
        memory_gb: float | None = None,
        skip_bad: bool = False,
        workers: int = 0,
        seed: int = 0,
        set=None,
    ):  # noqa: A002 - `--set key=value` is the public flag
        """Fingerprint DATA_DIR and write RUN_DIR/fingerprint.json and RUN_DIR/plans.json.

        Args:
            data_dir: folder of CT scans (files or DICOM series folders), one case each.
            run_dir: folder for plans, cache, models (created).
            device: auto|cpu|cuda: the device the plans are sized for.
            memory_gb: memory budget per device (default: what the device has).
            skip_bad: leave out unusable scans instead of stopping.
            workers: processes for reading scans (0: one per core, fewer if memory is short).
            seed: seed recorded in the plans for training.
            set: override a plans value, key=value (repeatable), e.g. --set crop_size=[64,64,64].
        """
        from screener_plans.planning.planner import plan

        device, workers = check_device(device), as_number(workers, "workers", int, minimum=0)
        memory_gb, seed = as_number(memory_gb, "memory-gb", float, above=0), as_number(seed, "seed", int, minimum=0)
        plans = plan(
            data_dir,
            run_dir,
            device=device,
            memory_gb=memory_gb,
            overrides=set,
            skip_bad=as_bool(skip_bad, "skip-bad"),
            workers=workers,
            seed=seed,
        )
        for s in plans["dataset"].get("skipped", []):
            _echo(f"skipped {s['path']}: {s['problem']}")
        _echo(
            f"planned {plans['dataset']['n_cases']} cases -> {run_dir}/plans.json "
            f"(preset {plans['preset']}, device {plans['device']}, spacing {plans['spacing']}, "
            f"crop {plans['crop_size']}, batch {plans['batch_size']}, window {plans['intensity']['window']})"
        )

    def preprocess(self, run_dir, workers: int = 0, data_dir=None, skip_bad: bool = False):
        """Preprocess the planned cases into RUN_DIR/preprocessed (resumable).

        Args:
            run_dir: a planned run.
            workers: worker processes (0: one per core, fewer if memory is short).
            data_dir: the data folder, if it moved since `plan`.
            skip_bad: go on past scans that cannot be used.
        """
        from screener_plans.data.preprocess import preprocess
        from screener_plans.planning.plans import load_plans

        summary = preprocess(
            run_dir,
            load_plans(plans_file(run_dir)),
            data_dir=data_dir,
            workers=as_number(workers, "workers", int, minimum=0),
            skip_bad=as_bool(skip_bad, "skip-bad"),
        )
        for e in summary["errors"]:
            _echo(f"skipped {e['path']}: {e['problem']}")
        _echo(
            f"preprocessed {summary['done']} case(s), {summary['cached']} already cached, "
            f"{len(summary['errors'])} failed"
        )

    def train(
        self,
        run_dir,
        stage: str | None = None,
        max_steps: int | None = None,
        device: str | None = None,
        condition: str | None = None,
        density: str | None = None,
        resume: bool = True,
        features: str | None = None,
        intensity_prior=None,
    ):
        """Train one stage (descriptor|condition|density) through its MONAI bundle; resumes by default.

        Args:
            run_dir: a preprocessed run.
            stage: descriptor|condition|density (default: descriptor, where the plans' scorer uses one).
            max_steps: steps to train (default: the plans' steps for the stage).
            device: auto|cpu|cuda (default: auto).
            condition: density only: masked|sincos|none|surround|histogram (default: from plans.json).
            density: density only: gaussian|flow|mixture|contrastive (default: from plans.json).
            resume: continue from the stage's newest checkpoint.
            features: density only: descriptor|intensity|descriptor+intensity|structure|descriptor+structure (default: plans).
            intensity_prior: density only: true|false, add -log p(HU) (default: plans).
        """
        from screener_plans.bundle_runner import train_stage

        device = None if device is None else check_device(device)
        stage = _default_stage(run_dir) if stage is None else stage
        path = train_stage(
            run_dir,
            stage,
            max_steps=max_steps,
            device=device,
            condition=condition,
            density=density,
            resume=as_bool(resume, "resume"),
            features=features,
            intensity_prior=intensity_prior,
        )
        _echo(f"{stage} model: {path}")

    def calibrate(self, run_dir, device: str = "auto", max_cases: int = 4):
        """Set the region threshold from the training scans' scores (RUN_DIR/calibration.json).

        Args:
            run_dir: a trained run.
            device: auto|cpu|cuda.
            max_cases: training scans to score (plan-and-train scores 4: the same default gives its threshold).
        """
        from screener_plans.inference.calibration import calibrate

        result = calibrate(
            run_dir, device=check_device(device), max_cases=as_number(max_cases, "max-cases", int, minimum=1)
        )
        _echo(f"threshold {result['threshold']:.4g} (quantile {result['quantile']}) -> {run_dir}/calibration.json")

    def predict(
        self,
        run_dir,
        input,
        output_dir,
        device: str = "auto",
        skip_bad: bool = True,  # noqa: A002
        overwrite: bool = False,
        torchscript=None,
    ):
        """Anomaly maps, regions and pictures for a CT file or folder (the inference bundle, wrapped).

        Args:
            run_dir: a trained run or a model fetched from a zoo.
            input: a CT file or a folder of CTs.
            output_dir: where <case>.nii.gz, <case>_regions.json and <case>.png are written.
            device: auto|cpu|cuda.
            skip_bad: skip unusable scans (listed at the end) instead of stopping.
            overwrite: score again cases whose outputs exist (default: skip them, so a re-run resumes).
            torchscript: use RUN_DIR/models/model.ts (true) or the TorchScript file at this path.
        """
        from screener_plans.bundle_runner import run_bundle

        device = check_device(device)
        run_bundle(
            "screener_inference",
            "inference.yaml",
            run_dir=str(run_dir),
            input=str(input),
            output_dir=str(output_dir),
            device=device,
            skip_bad=as_bool(skip_bad, "skip-bad"),
            overwrite=as_bool(overwrite, "overwrite"),
            torchscript=torchscript,
        )

    def bundles(self):
        """Print the folder holding the four bundles (for `python -m monai.bundle run --config_file ...`)."""
        from screener_plans.bundle_runner import bundles_root

        print(bundles_root())

    @property
    def zoo(self):
        """Share trained models: screener zoo publish|list|fetch|export (see `screener zoo --help`)."""
        return Zoo()

    def plan_and_train(
        self,
        data_dir,
        run_dir,
        budget_minutes: float | None = None,
        device: str = "auto",
        condition: str | None = None,
        density: str | None = None,
        skip_bad: bool = False,
        workers: int = 0,
        set=None,
        features: str | None = None,  # noqa: A002
        intensity_prior=None,
    ):
        """Plan, preprocess, train the stages the density needs, calibrate. Re-running resumes.

        Args:
            data_dir: folder of CT scans (files or DICOM series folders), one case each.
            run_dir: folder for plans, cache, models (created).
            budget_minutes: set the steps so the whole run ends within this many minutes here.
            device: auto|cpu|cuda.
            condition: masked|sincos|none|surround|histogram (default: the preset's).
            density: gaussian|flow|mixture|contrastive (default: the preset's; contrastive: networks trained to find synthetic anomalies).
            skip_bad: leave out unusable scans instead of stopping.
            workers: processes for reading and preprocessing (0: one per core, fewer if memory is short).
            set: override a plans value, key=value (repeatable).
            features: what the density scores: descriptor|intensity|descriptor+intensity|structure|descriptor+structure (with
                intensity alone no descriptor is trained).
            intensity_prior: true|false: add -log p(HU) under the training scans' histogram.
        """
        from screener_plans.pipeline import plan_and_train

        plan_and_train(
            data_dir,
            run_dir,
            budget_minutes=as_number(budget_minutes, "budget-minutes", float, above=0),
            device=check_device(device),
            condition=condition,
            density=density,
            skip_bad=as_bool(skip_bad, "skip-bad"),
            overrides=set,
            workers=as_number(workers, "workers", int, minimum=0),
            features=features,
            intensity_prior=intensity_prior,
        )
        _echo(f"trained run ready: {run_dir}  (next: screener predict {run_dir} INPUT OUTPUT_DIR)")

    def demo(
        self, out_dir="screener_demo", budget_minutes: float = 10.5, cases: int | None = None, device: str = "auto"
    ):
        """Synthetic data -> plan-and-train -> predict -> evaluate; prints metrics and picture paths.

        Args:
            out_dir: folder for the data, the run, the predictions and the metrics.
            budget_minutes: training budget (the whole demo takes about this long).
            cases: synthetic scans (default: 32).
            device: auto|cpu|cuda.
        """
        from screener_plans.demo import run_demo

        print(
            run_demo(
                out_dir,
                budget_minutes=as_number(budget_minutes, "budget-minutes", float, above=0),
                cases=as_number(cases, "cases", int, minimum=2),
                device=check_device(device),
            )
        )

    def evaluate(self, pred_dir, labels_dir, mask_dir=None, output=None, only_predicted: bool = False):
        """Print AUROC, AUROC@FPR0.3 and AUPRO@FPR0.3 (pooled and per case) as JSON.

        Args:
            pred_dir: anomaly maps (<case>.nii.gz) from `predict`.
            labels_dir: label masks with the same case names.
            mask_dir: masks limiting the voxels counted (default: every voxel; outside the body
                the maps hold their lowest score).
            output: also write the JSON to this file.
            only_predicted: true: evaluate the labelled cases that have a map and name the others
                (default: a label without a map is an error).
        """
        from screener_plans.io_utils import ensure_writable_file, write_text
        from screener_plans.metrics import evaluate

        only_predicted = as_bool(only_predicted, "only-predicted")
        if output:
            ensure_writable_file(output)  # before the work, not after it
        result = evaluate(pred_dir, labels_dir, mask_dir=mask_dir, only_predicted=only_predicted)
        text = json.dumps(result, indent=2)
        print(text)
        if output:
            write_text(output, text + "\n")


class Zoo:
    """Model zoo: ZOO is a folder, a file:// URL or an http(s):// URL holding model_info.json and NAME_vX.Y.Z.zip."""

    def publish(
        self, run_dir, zoo, name, version, force: bool = False, changelog: str | None = None, torchscript: bool = False
    ):
        """Package a trained run as ZOO/NAME_vVERSION.zip (a MONAI bundle) and add it to ZOO/model_info.json.

        Args:
            run_dir: a trained (and calibrated) run.
            zoo: the zoo folder (created if needed).
            name: model name, e.g. chest_ct_screener.
            version: semantic version, e.g. 1.0.0.
            force: true|false: replace this name and version if the zoo holds it already.
            changelog: a line for the bundle's changelog.
            torchscript: true|false: also ship models/model.ts (a TorchScript export of the scorer).
        """
        from screener_plans.zoo import publish

        entry = publish(
            run_dir,
            zoo,
            name,
            version,
            force=as_bool(force, "force"),
            changelog=changelog,
            torchscript=as_bool(torchscript, "torchscript"),
        )
        _echo(
            f"published {entry['name']}@{entry['version']} -> {zoo}/{entry['source']} "
            f"(sha256 {entry['checksum'][:12]}...)"
        )

    def list(self, zoo, name=None):  # noqa: A003 - `screener zoo list` is the public command
        """The zoo's models and versions (latest marked).

        Args:
            zoo: a zoo folder, file:// URL or http(s):// URL.
            name: list only this model's versions.
        """
        from screener_plans.zoo import format_models, list_models

        print(format_models(list_models(zoo, name)))

    def fetch(self, model, dest, zoo, force: bool = False):
        """Fetch NAME[@VERSION] (default: latest) into DEST/NAME, checksum-verified; then screener predict DEST/NAME.

        Args:
            model: NAME or NAME@VERSION.
            dest: folder to unpack into (DEST/NAME).
            zoo: a zoo folder, file:// URL or http(s):// URL.
            force: true|false: replace DEST/NAME if it exists.
        """
        from screener_plans.zoo import fetch

        path = fetch(model, dest, zoo, force=as_bool(force, "force"))
        _echo(f"fetched {model} -> {path}  (next: screener predict {path} INPUT OUTPUT_DIR)")

    def export(self, path, onnx: bool = False, out=None):
        """Export the full scorer of a run or fetched model to PATH/models/model.ts (TorchScript) or model.onnx.

        Args:
            path: a trained run or a fetched model.
            onnx: true|false: ONNX (needs the onnx package) instead of TorchScript.
            out: file to write (default: PATH/models/model.ts or PATH/models/model.onnx).
        """
        from screener_plans.zoo import export_onnx, export_torchscript

        onnx = as_bool(onnx, "onnx")
        result = export_onnx(path, out) if onnx else export_torchscript(path, out)
        _echo(f"exported {'ONNX' if onnx else 'TorchScript'} scorer -> {result}")


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
            values.append(a[len(flag) + 1 :])
        else:
            rest.append(a)
        i += 1
    return values, rest


def _default_stage(run_dir) -> str:
    """``train`` without ``--stage``: the descriptor, unless the run's scorer does without one (then
    training it would only cost time: name the stages instead)."""
    from screener_plans.engines.models import scorer_stages
    from screener_plans.planning.plans import load_plans

    d = load_plans(plans_file(run_dir))["density"]
    features = d.get("features", "descriptor")
    stages = scorer_stages({"features": features, "condition": d["condition"]})
    if stages[0] == "descriptor":
        return "descriptor"
    order = ", then ".join(f"--stage {s}" for s in stages)
    raise ScreenerError(
        f"{run_dir}: this run's scorer uses no descriptor (density.features={features}, "
        f"density.condition={d['condition']}); name the stage to train: {order} "
        "(or `screener plan-and-train` for every stage)"
    )


def main(argv: list[str] | None = None) -> int:
    import fire

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv in (["--version"], ["version"]):
        import monai
        import torch

        import screener_plans

        print(f"screener {screener_plans.__version__} (MONAI {monai.__version__}, PyTorch {torch.__version__})")
        return 0
    sets, argv = _collect_repeated(argv, "--set")
    if sets:
        argv += ["--set", json.dumps(sets)]
    with root_logger_kept() as root:
        log_to_stderr(root)
        return _run_command(fire, argv)


def _command_function(argv: list[str]):
    """``(words, function)`` of the command ``argv`` names (``zoo export`` -> ``Zoo.export``), or None."""
    owner, words = Screener, []
    for token in argv:
        if token.startswith("-"):
            break
        member = owner.__dict__.get(token.replace("-", "_"))
        if isinstance(member, property):  # `zoo`: a group of subcommands
            owner, words = Zoo, words + [token]
            continue
        if callable(member) and not token.startswith("_"):
            return words + [token], member
        return None
    return None


def check_flags(argv: list[str]) -> None:
    """Fire runs a command first and complains about an unknown flag after (a typo in a
    `calibrate` flag would rewrite calibration.json, then fail): unknown flags are refused here,
    before anything runs."""
    import inspect

    found = _command_function(argv)
    if found is None:
        return  # no command, or an unknown one: fire says so without running anything
    words, function = found
    params = [p for p in inspect.signature(function).parameters if p != "self"]
    for token in argv[len(words) :]:
        if token == "--":  # fire's own flags follow, e.g. `-- --help`
            return
        if not token.startswith("--") or token in ("--help", "--helpfull"):
            continue
        name = token[2:].split("=", 1)[0].replace("-", "_")
        if name not in params and not (name.startswith("no") and name[2:] in params):
            options = ", ".join("--" + p.replace("_", "-") for p in params)
            raise ScreenerError(
                f"unknown option {token.split('=', 1)[0]} for `screener {' '.join(words)}` (its options: {options})"
            )


def _run_command(fire, argv: list[str]) -> int:
    try:
        check_flags(argv)
        fire.Fire(Screener(), command=argv, name="screener")
    except ScreenerError as e:
        remove_dirs_left_empty()
        _echo(f"screener: error: {e}")
        return 2
    except Exception as e:
        from screener_plans.bundle_runner import find_screener_error

        found = find_screener_error(e)
        if found is None:
            raise
        remove_dirs_left_empty()
        _echo(f"screener: error: {found}")
        return 2
    except KeyboardInterrupt as e:
        # a training run says where it stopped and which checkpoint resumes it
        _echo(f"screener: interrupted: {e}" if str(e) else "screener: interrupted")
        return 130
    except fire.core.FireExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
