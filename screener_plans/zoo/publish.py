"""Publish a trained run to a model zoo folder, and list a zoo's models."""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
import tempfile
from pathlib import Path

from screener_plans.errors import ScreenerError
from screener_plans.layout import calibration_path
from screener_plans.zoo.export import export_torchscript
from screener_plans.zoo.index import ZooLocation, versions_of, write_index
from screener_plans.zoo.package import build_bundle, check_name, check_version, version_key, zip_bundle

logger = logging.getLogger(__name__)


def publish(
    run_dir, zoo, name, version, force: bool = False, changelog: str | None = None, torchscript: bool = False
) -> dict:
    """Package ``run_dir`` as ``ZOO/NAME_vVERSION.zip`` and add it to ``ZOO/model_info.json``; returns the entry.

    An existing version is refused unless ``force``. The bundle's changelog carries the notes
    of the earlier versions of ``name`` in this zoo.
    """
    from screener_plans.io_utils import ensure_writable_dir

    name, version = check_name(name), check_version(version)
    location = ZooLocation(zoo)
    if location.local is None:
        raise ScreenerError(f"--zoo {zoo}: publishing needs a local folder or a file:// URL")
    zoo_dir = ensure_writable_dir(location.local)
    key = f"{name}_v{version}"
    zip_path = zoo_dir / f"{key}.zip"
    index = location.read_index(missing_ok=True)
    if (key in index or zip_path.exists()) and not force:
        raise ScreenerError(
            f"{zoo_dir}: {name} {version} is already published; publish a new version or use --force to replace it"
        )
    note = str(changelog) if changelog else f"{name} {version}"
    history = {
        e["version"]: e.get("changelog", "")
        for e in index.values()
        if e["name"] == name and version_key(e["version"]) < version_key(version)
    }
    history[version] = note
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.publish-", dir=zoo_dir))
    try:
        build_bundle(run_dir, tmp / name, name, version, history)
        if torchscript:
            export_torchscript(tmp / name)
        checksum, size = zip_bundle(tmp / name, zip_path, top=name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not calibration_path(run_dir).exists():
        logger.warning(
            "%s has no calibration.json: the published model's region threshold falls back to each "
            "scan's 99.9th percentile; run `screener calibrate %s` and publish again to ship one",
            run_dir,
            run_dir,
        )
    meta = _bundle_meta(zip_path, name)
    entry = {
        "name": name,
        "version": version,
        "source": zip_path.name,
        "checksum": checksum,
        "checksum_type": "sha256",
        "size": size,
        "published": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "changelog": note,
        "monai_version": meta.get("monai_version"),
        "screener_version": meta.get("required_packages_version", {}).get("screener"),
        "scorer": meta.get("screener", {}).get("scorer"),
    }
    index = location.read_index(missing_ok=True)  # re-read: keep entries published meanwhile
    index[key] = entry
    write_index(zoo_dir, index)
    return entry


def _bundle_meta(zip_path: Path, name: str) -> dict:
    import json
    import zipfile

    with zipfile.ZipFile(zip_path) as zf:
        return json.loads(zf.read(f"{name}/configs/metadata.json"))


def list_models(zoo, name: str | None = None) -> list[dict]:
    """Entries of the zoo's index (of ``name`` only, if given), by name then version; ``latest`` marked."""
    location = ZooLocation(zoo)
    index = location.read_index()
    names = sorted({e["name"] for e in index.values()} if name is None else {str(name)})
    rows = []
    for n in names:
        versions = versions_of(index, n)
        if not versions and name is not None:
            raise ScreenerError(f"{location.index_location()}: no model named {n!r}")
        for v in versions:
            rows.append({**index[f"{n}_v{v}"], "latest": v == versions[-1]})
    return rows


def format_models(rows: list[dict]) -> str:
    """One line per published model for the console."""
    if not rows:
        return "no models published"
    lines = []
    for r in rows:
        size = f"{r['size'] / 1e6:.1f} MB" if isinstance(r.get("size"), int) else "?"
        mark = "  (latest)" if r.get("latest") else ""
        lines.append(f"{r['name']}@{r['version']}{mark}  {size}  {r.get('published', '')}  {r.get('changelog', '')}")
    return "\n".join(lines)
