"""Model zoo: publish -> list -> fetch -> predict, versions, checksums, MONAI tooling, exports.

The runs are planned on tiny CTs and hold randomly initialised weights saved in the run layout:
the zoo moves and checks weights, it does not care whether they were trained.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import sys
import threading
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ras_affine, simple_ct, write_ct_folder, write_nifti
from run_utils import make_random_run as _make_run

from screener_plans.cli import main
from screener_plans.errors import ScreenerError
from screener_plans.inference.loader import load_run_scorer
from screener_plans.zoo import export_torchscript, fetch, list_models, load_torchscript_scorer, publish
from screener_plans.zoo.index import INDEX_NAME
from screener_plans.zoo.layout import default_bundle_root

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "bundles" / "schema" / "meta_schema_20240725.json"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny tensors: a second intra-op thread only adds waiting, badly so on a busy 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def env(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("zoo")
    data = write_ct_folder(root / "data", 3, (40, 36, 20), (3.0, 3.0, 4.0))
    scans = root / "scans"
    scans.mkdir()
    write_nifti(scans / "scan.nii.gz", simple_ct((40, 36, 20), seed=9), ras_affine((3.0, 3.0, 4.0), (5.0, -3.0, 10.0)))
    from screener_plans.planning.planner import plan

    plans = plan(
        data,
        root / "planned",
        device="cpu",
        workers=1,
        progress=False,
        overrides={"crop_size": [16, 16, 16], "spacing": [4.0, 4.0, 4.0], "inference.sw_batch_size": 4},
    )
    masked = _make_run(root, plans, "masked", "flow")
    sincos = _make_run(root, plans, "sincos", "gaussian", features="descriptor")  # the paper's descriptor path
    zoo = root / "zoo"
    publish(masked, zoo, "chest", "0.1.0", changelog="first")
    publish(masked, zoo, "chest", "0.2.0", changelog="second")
    publish(masked, zoo, "chest", "0.10.0", changelog="tenth")  # latest, though not as a string
    publish(sincos, zoo, "chest-sincos", "1.0.0")
    return {"root": root, "masked": masked, "sincos": sincos, "zoo": zoo, "scan": scans / "scan.nii.gz"}


def _map(out_dir: Path) -> np.ndarray:
    return np.asarray(nib.load(str(out_dir / "scan.nii.gz")).dataobj, dtype=np.float32)


def _version(bundle: Path) -> str:
    return json.loads((bundle / "configs" / "metadata.json").read_text())["version"]


def test_publish_list_fetch_predict_round_trip(env, tmp_path, capsys):
    from screener_plans.inference.predict import predict

    assert main(["zoo", "list", "--zoo", str(env["zoo"])]) == 0
    listing = capsys.readouterr().out
    assert "chest@0.10.0  (latest)" in listing and "chest@0.1.0 " in listing and "chest-sincos@1.0.0" in listing
    index = json.loads((env["zoo"] / INDEX_NAME).read_text())
    assert set(index) == {"chest_v0.1.0", "chest_v0.2.0", "chest_v0.10.0", "chest-sincos_v1.0.0"}
    assert index["chest_v0.1.0"]["source"] == "chest_v0.1.0.zip" and len(index["chest_v0.1.0"]["checksum"]) == 64
    for f in (env["zoo"] / INDEX_NAME, env["zoo"] / "chest_v0.1.0.zip"):
        assert f.stat().st_mode & 0o044, f"{f.name} must be readable by others (a shared zoo)"

    dest = tmp_path / "models"
    assert main(["zoo", "fetch", "chest@0.1.0", str(dest), "--zoo", str(env["zoo"])]) == 0
    bundle = dest / "chest"
    for rel in (
        "configs/metadata.json",
        "configs/inference.yaml",
        "configs/export.yaml",
        "models/model.pt",
        "models/density_config.json",
        "plans.json",
        "calibration.json",
        "docs/README.md",
        "LICENSE",
    ):
        assert (bundle / rel).is_file(), rel
    assert sorted(p.name for p in dest.iterdir()) == ["chest"]  # no temporary leftovers
    plans = json.loads((bundle / "plans.json").read_text())
    assert "cases" not in plans["dataset"] and "data_dir" not in plans["dataset"]
    assert "cases" not in json.loads((bundle / "calibration.json").read_text())
    card = (bundle / "docs" / "README.md").read_text()
    assert card.startswith("# chest v0.1.0") and "- 0.1.0: first" in card

    assert main(["predict", str(bundle), str(env["scan"]), str(tmp_path / "fetched"), "--device", "cpu"]) == 0
    predict(env["masked"], env["scan"], tmp_path / "original", device="cpu", progress=False)
    fetched, original = _map(tmp_path / "fetched"), _map(tmp_path / "original")
    assert fetched.shape == (40, 36, 20) and np.ptp(fetched) > 0
    np.testing.assert_allclose(fetched, original, rtol=1e-5, atol=1e-4)
    regions = json.loads((tmp_path / "fetched" / "scan_regions.json").read_text())
    assert regions.get("threshold_calibrated") is True or regions.get("threshold") == pytest.approx(60.0)


def test_version_selection(env, tmp_path):
    latest = fetch("chest", tmp_path / "a", env["zoo"])
    assert _version(latest) == "0.10.0"  # numeric order, not string order
    changelog = json.loads((latest / "configs" / "metadata.json").read_text())["changelog"]
    assert changelog == {"0.10.0": "tenth", "0.2.0": "second", "0.1.0": "first"}
    assert _version(fetch("chest@0.2.0", tmp_path / "b", env["zoo"])) == "0.2.0"
    with pytest.raises(ScreenerError, match="no version 9.9.9.*0.1.0, 0.2.0, 0.10.0"):
        fetch("chest@9.9.9", tmp_path / "c", env["zoo"])
    with pytest.raises(ScreenerError, match="no model named 'lungs'"):
        fetch("lungs", tmp_path / "c", env["zoo"])
    assert not (tmp_path / "c").exists()
    with pytest.raises(ScreenerError, match="already exists .version 0.10.0.*--force"):
        fetch("chest@0.1.0", tmp_path / "a", env["zoo"])
    assert _version(fetch("chest@0.1.0", tmp_path / "a", env["zoo"], force=True)) == "0.1.0"
    assert [r["version"] for r in list_models(env["zoo"], "chest")] == ["0.1.0", "0.2.0", "0.10.0"]


def test_republish_refused_without_force(env, tmp_path):
    zoo = tmp_path / "zoo"
    first = publish(env["masked"], zoo, "m", "1.0.0")
    before = (zoo / "m_v1.0.0.zip").read_bytes()
    with pytest.raises(ScreenerError, match="already published.*--force"):
        publish(env["masked"], zoo, "m", "1.0.0")
    assert (zoo / "m_v1.0.0.zip").read_bytes() == before
    assert main(["zoo", "publish", str(env["masked"]), "--zoo", str(zoo), "--name", "m", "--version", "1.0.0"]) == 2
    again = publish(env["masked"], zoo, "m", "1.0.0", force=True)
    assert again["checksum"] == first["checksum"]  # same run, same bytes: zips are deterministic
    changed = publish(env["masked"], zoo, "m", "1.0.0", force=True, changelog="retrained")
    assert changed["checksum"] != first["checksum"]
    assert json.loads((zoo / INDEX_NAME).read_text())["m_v1.0.0"]["checksum"] == changed["checksum"]
    assert {p.name for p in zoo.iterdir()} == {INDEX_NAME, "m_v1.0.0.zip"}  # no temporary leftovers
    for bad_name, bad_version in (("a/b", "1.0.0"), ("net_v2", "1.0.0"), ("m", "1.0"), ("m", "01.0.0")):
        with pytest.raises(ScreenerError):
            publish(env["masked"], zoo, bad_name, bad_version)


def _copy_zoo(env, tmp_path) -> Path:
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    shutil.copy(env["zoo"] / INDEX_NAME, zoo)
    shutil.copy(env["zoo"] / "chest_v0.1.0.zip", zoo)
    return zoo


def test_tampered_zip_refused_and_nothing_left(env, tmp_path, capsys):
    zoo = _copy_zoo(env, tmp_path)
    data = bytearray((zoo / "chest_v0.1.0.zip").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (zoo / "chest_v0.1.0.zip").write_bytes(bytes(data))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ScreenerError, match="checksum mismatch.*tampered"):
        fetch("chest@0.1.0", dest, zoo)
    assert list(dest.iterdir()) == []
    assert main(["zoo", "fetch", "chest@0.1.0", str(tmp_path / "new"), "--zoo", str(zoo)]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_truncated_zip_refused(env, tmp_path):
    zoo = _copy_zoo(env, tmp_path)
    data = (zoo / "chest_v0.1.0.zip").read_bytes()
    (zoo / "chest_v0.1.0.zip").write_bytes(data[: len(data) // 3])
    with pytest.raises(ScreenerError, match="truncated"):
        fetch("chest@0.1.0", tmp_path / "dest", zoo)
    # a MONAI-style entry (checksum and source only) still catches it, by the checksum
    index = json.loads((zoo / INDEX_NAME).read_text())
    index = {"chest_v0.1.0": {"checksum": index["chest_v0.1.0"]["checksum"], "source": "chest_v0.1.0.zip"}}
    (zoo / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(ScreenerError, match="checksum mismatch"):
        fetch("chest@0.1.0", tmp_path / "dest", zoo)
    assert not (tmp_path / "dest").exists()


def test_unsafe_zip_entries_refused(tmp_path):
    from screener_plans.zoo.package import sha256_file

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    with zipfile.ZipFile(zoo / "evil_v1.0.0.zip", "w") as zf:
        zf.writestr("evil/configs/metadata.json", json.dumps({"version": "1.0.0"}))
        zf.writestr("evil/../../escaped.txt", "x")
    index = {"evil_v1.0.0": {"checksum": sha256_file(zoo / "evil_v1.0.0.zip"), "source": "evil_v1.0.0.zip"}}
    (zoo / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(ScreenerError, match="unsafe path"):
        fetch("evil", tmp_path / "dest", zoo)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "dest").exists()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_file_url_and_http_zoo(env, tmp_path):
    assert _version(fetch("chest", tmp_path / "f", env["zoo"].as_uri())) == "0.10.0"
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(env["zoo"]))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert [r["version"] for r in list_models(url, "chest")] == ["0.1.0", "0.2.0", "0.10.0"]
        assert _version(fetch("chest@0.2.0", tmp_path / "h", url)) == "0.2.0"
        with pytest.raises(ScreenerError, match="no model zoo index"):
            list_models(url + "/nowhere")
        with pytest.raises(ScreenerError, match="local folder or a file:// URL"):
            publish(env["masked"], url, "x", "1.0.0")
    finally:
        server.shutdown()
        server.server_close()


def test_monai_download_and_run(env, tmp_path, monkeypatch):
    from monai.bundle import download, run

    url = (env["zoo"] / "chest_v0.1.0.zip").as_uri()
    download(name="chest", version="0.1.0", url=url, bundle_dir=str(tmp_path / "monai"), progress=False)
    config = tmp_path / "monai" / "chest" / "configs" / "inference.yaml"
    assert _version(config.parent.parent) == "0.1.0"
    # as `python -m monai.bundle run --config_file .../inference.yaml --input SCAN --output_dir OUT`
    monkeypatch.setattr(sys, "argv", ["monai.bundle", "run", "--config_file", str(config)])
    monkeypatch.chdir(tmp_path)
    run(config_file=str(config), input=str(env["scan"]), output_dir=str(tmp_path / "out"), device="cpu")
    assert (tmp_path / "out" / "scan.nii.gz").is_file() and (tmp_path / "out" / "scan.png").is_file()
    # the declared sliding window takes MONAI's usual overrides
    run(config_file=str(config), input=str(env["scan"]), output_dir=str(tmp_path / "o5"), device="cpu", overlap=0.5)
    maps = [np.asarray(nib.load(str(tmp_path / d / "scan.nii.gz")).dataobj) for d in ("out", "o5")]
    assert maps[0].shape == maps[1].shape and not np.array_equal(maps[0], maps[1])
    from screener_plans.bundle_runner import find_screener_error

    with pytest.raises(Exception) as bad:
        run(config_file=str(config), input=str(env["scan"]), output_dir=str(tmp_path / "ob"), device="cpu", overlap=1.5)
    assert "--overlap must be a number in [0, 1), got 1.5" in str(find_screener_error(bad.value))


def test_default_bundle_root():
    assert default_bundle_root(["x", "--config_file", "/z/m/configs/inference.yaml"]) == "/z/m"
    assert default_bundle_root(["x", "--config_file=m/configs/a.yaml"]) == "m"
    assert default_bundle_root(["x", "--config_file", "['/z/m/configs/a.yaml','/z/m/configs/b.yaml']"]) == "/z/m"
    assert default_bundle_root(["x"]) == "."


def test_verify_metadata_offline(env, tmp_path):
    pytest.importorskip("jsonschema")
    from monai.bundle import verify_metadata

    fetched = fetch("chest", tmp_path, env["zoo"])
    metas = [
        ROOT / "bundles" / f"screener_{b}" / "configs" / "metadata.json"
        for b in ("descriptor", "condition", "density", "inference")
    ]
    for meta in metas + [fetched / "configs" / "metadata.json"]:
        verify_metadata(meta_file=str(meta), filepath=str(SCHEMA))
    verify_metadata(
        meta_file=str(fetched / "configs" / "metadata.json"), filepath=str(fetched / "configs" / "meta_schema.json")
    )
    bad = json.loads(metas[0].read_text())
    del bad["version"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="version"):
        verify_metadata(meta_file=str(tmp_path / "bad.json"), filepath=str(SCHEMA))


def test_verify_net_in_out(env, tmp_path):
    from monai.bundle import verify_net_in_out

    bundles = ROOT / "bundles"
    for stage in ("descriptor", "condition"):
        d = bundles / f"screener_{stage}" / "configs"
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(d / "metadata.json"),
            config_file=str(d / "train.yaml"),
            device="cpu",
            plans_file=str(env["masked"] / "plans.json"),
        )
    # the density stage's metadata describes the whole scorer of a (masked-condition) run
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundles / "screener_density" / "configs" / "metadata.json"),
        config_file=str(bundles / "screener_inference" / "configs" / "export.yaml"),
        device="cpu",
        bundle_root=str(env["masked"]),
    )
    for model in ("chest", "chest-sincos"):
        b = fetch(model, tmp_path, env["zoo"])
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(b / "configs" / "metadata.json"),
            config_file=str(b / "configs" / "export.yaml"),
            device="cpu",
            bundle_root=str(b),
        )


@pytest.mark.slow
@pytest.mark.parametrize("model", ["chest", "chest-sincos"])
def test_torchscript_matches_eager_and_predicts(env, tmp_path, model):
    from screener_plans.planning.plans import load_plans

    if model == "chest":  # export a fetched model
        bundle = fetch(model, tmp_path, env["zoo"])
        assert export_torchscript(bundle) == bundle / "models" / "model.ts"
    else:  # or publish with the export inside
        publish(env["sincos"], tmp_path / "zoo", model, "1.0.0", torchscript=True)
        bundle = fetch(model, tmp_path, tmp_path / "zoo")
    ts = bundle / "models" / "model.ts"
    plans = load_plans(bundle / "plans.json")
    eager, traced = load_run_scorer(bundle, plans), load_torchscript_scorer(ts)
    torch.manual_seed(1)
    image = torch.rand(3, 1, 16, 24, 16)  # another batch and shape than the traced example
    origin = torch.tensor([[0.0, 0.0, 0.0], [40.0, -8.0, 12.0], [300.0, 200.0, -100.0]])
    spacing = torch.tensor([plans["spacing"]] * 3)
    with torch.no_grad():
        want, got = eager(image, origin, spacing), traced(image, origin, spacing)
    assert got.shape == want.shape == (3, 1, 16, 24, 16)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
    if model == "chest-sincos":  # positions matter, and the export sees them
        assert not torch.allclose(want[1], want[2])
    with pytest.raises(ScreenerError, match="exported for spacing"):
        load_torchscript_scorer(ts, {**plans, "spacing": [9.0, 9.0, 9.0]})
    assert main(["predict", str(bundle), str(env["scan"]), str(tmp_path / "eager"), "--device", "cpu"]) == 0
    assert (
        main(["predict", str(bundle), str(env["scan"]), str(tmp_path / "ts"), "--device", "cpu", "--torchscript"]) == 0
    )
    np.testing.assert_allclose(_map(tmp_path / "ts"), _map(tmp_path / "eager"), rtol=1e-4, atol=1e-3)
    if model == "chest":  # a training run exports too, to any path
        run_ts = export_torchscript(env["masked"], tmp_path / "run.ts")
        assert not any(p.name.startswith(".") for p in env["masked"].iterdir())  # its temporary bundle is gone
        assert (
            main(
                [
                    "predict",
                    str(env["masked"]),
                    str(env["scan"]),
                    str(tmp_path / "run_ts"),
                    "--device",
                    "cpu",
                    "--torchscript",
                    str(run_ts),
                ]
            )
            == 0
        )
        np.testing.assert_allclose(_map(tmp_path / "run_ts"), _map(tmp_path / "eager"), rtol=1e-4, atol=1e-3)


def test_torchscript_missing_is_a_clear_error(env, tmp_path, capsys):
    bundle = fetch("chest@0.2.0", tmp_path, env["zoo"])
    assert main(["predict", str(bundle), str(env["scan"]), str(tmp_path / "o"), "--torchscript"]) == 2
    assert "TorchScript model not found" in capsys.readouterr().err


def test_onnx_export_matches_eager(env, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from screener_plans.nets import coordinate_grid_mm
    from screener_plans.planning.plans import load_plans
    from screener_plans.zoo import PatchScorer, export_onnx

    bundle = fetch("chest-sincos", tmp_path, env["zoo"])
    path = export_onnx(bundle)
    plans = load_plans(bundle / "plans.json")
    scorer = load_run_scorer(bundle, plans)
    image = torch.rand(2, 1, 24, 16, 16)
    origin = torch.tensor([[0.0, 0.0, 0.0], [60.0, -20.0, 8.0]])
    spacing = torch.tensor([plans["spacing"]] * 2)
    patch = torch.cat([image, coordinate_grid_mm(origin, spacing, image.shape[2:])], dim=1)
    with torch.no_grad():
        want = scorer(image, origin, spacing)
        assert torch.allclose(PatchScorer.from_scorer(scorer)(patch), want, rtol=1e-4, atol=1e-3)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"patch": patch.numpy()})[0]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_torchscript_of_retrained_weights_is_refused_and_same_weights_are_one_model(env, tmp_path, capsys):
    """The same weights, eager or traced or published, are one model to `predict`'s re-runs; a
    TorchScript export made before a stage was retrained is refused, not used."""
    from screener_plans.inference.predict import model_fingerprint
    from screener_plans.planning.plans import load_plans

    run = tmp_path / "run"
    shutil.copytree(env["masked"], run)
    export_torchscript(run)
    plans = load_plans(run / "plans.json")
    publish(run, tmp_path / "zoo", "same", "1.0.0")
    bundle = fetch("same", tmp_path / "fetched", tmp_path / "zoo")
    ids = {
        model_fingerprint(s, 1.5)
        for s in (load_run_scorer(run, plans), load_run_scorer(run, plans, True), load_run_scorer(bundle, plans))
    }
    assert len(ids) == 1
    out = tmp_path / "out"
    assert main(["predict", str(run), str(env["scan"]), str(out), "--device", "cpu"]) == 0
    assert main(["predict", str(run), str(env["scan"]), str(out), "--device", "cpu", "--torchscript", "true"]) == 0
    capsys.readouterr()

    density = run / "density" / "models" / "model.pt"  # the density retrained (other weights)
    state = torch.load(density, weights_only=True)
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, density)
    with pytest.raises(ScreenerError, match="exported from other weights"):
        load_run_scorer(run, plans, True)
    assert (
        main(["predict", str(run), str(env["scan"]), str(tmp_path / "o2"), "--device", "cpu", "--torchscript", "true"])
        == 2
    )
    err = capsys.readouterr().err
    assert "exported from other weights" in err and f"screener zoo export {run}" in err


def test_publish_warns_without_calibration_and_refuses_a_stale_one(env, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(env["masked"], run)
    (run / "calibration.json").unlink()
    with caplog.at_level("WARNING"):
        publish(run, tmp_path / "zoo", "uncal", "1.0.0")
    assert "has no calibration.json" in caplog.text and f"screener calibrate {run}" in caplog.text
    (run / "calibration.json").write_text(
        json.dumps({"threshold": 2.0, "quantile": 0.999, "cases": [], "density_model": "0" * 16})
    )  # another density's
    with pytest.raises(ScreenerError, match="calibrated with another density model"):
        publish(run, tmp_path / "zoo", "uncal", "2.0.0")
