"""Fetch a published model: download, verify the checksum, extract atomically into ``DEST/NAME``.

Everything happens in a hidden temporary folder inside DEST; only a verified, fully
extracted bundle is renamed into place, so a failed fetch leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from screener_plans.errors import ScreenerError
from screener_plans.layout import BUNDLE_METADATA
from screener_plans.zoo.index import ZooLocation, open_source, select


def parse_model_spec(spec) -> tuple[str, str | None]:
    """``NAME`` or ``NAME@X.Y.Z`` -> (name, version or None)."""
    from screener_plans.zoo.package import check_name, check_version

    spec = str(spec)
    name, _, version = spec.partition("@")
    return check_name(name), (check_version(version) if version else None)


def download(location: str, target: Path, checksum: str, size: int | None = None) -> None:
    """Copy ``location`` to ``target``, checking its size and sha256; a mismatch raises ScreenerError."""
    h, n = hashlib.sha256(), 0
    try:
        src = open_source(location)
    except FileNotFoundError:
        raise ScreenerError(f"{location}: model file not found (the zoo index points to a missing file)") from None
    try:
        with src, open(target, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                h.update(chunk)
                dst.write(chunk)
                n += len(chunk)
    except OSError as e:
        raise ScreenerError(f"{location}: download interrupted ({e})") from None
    if isinstance(size, int) and n != size:
        raise ScreenerError(
            f"{location}: truncated or altered download ({n} bytes, the index says {size}); nothing was installed"
        )
    if h.hexdigest() != checksum.lower():
        raise ScreenerError(
            f"{location}: checksum mismatch (sha256 {h.hexdigest()[:16]}..., the index says "
            f"{checksum[:16]}...): the file is corrupt or was tampered with; nothing was installed"
        )


def check_members(zf: zipfile.ZipFile, top: str, where: str) -> None:
    """Refuse absolute paths, '..', links and anything outside ``top/``."""
    for info in zf.infolist():
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
            raise ScreenerError(f"{where}: unsafe path {name!r} in the zip; nothing was installed")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ScreenerError(f"{where}: link {name!r} in the zip; nothing was installed")
        if not parts or parts[0] != top:
            raise ScreenerError(f"{where}: {name!r} is outside the bundle folder {top}/; nothing was installed")


def extract_bundle(zip_path: Path, out_dir: Path, top: str, where: str) -> Path:
    """Check and extract ``zip_path`` into ``out_dir``; returns ``out_dir/top``."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            check_members(zf, top, where)
            bad = zf.testzip()
            if bad is not None:
                raise ScreenerError(f"{where}: corrupt zip member {bad!r}; nothing was installed")
            zf.extractall(out_dir)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as e:
        raise ScreenerError(f"{where}: not a valid zip ({e}); nothing was installed") from None
    except OSError as e:
        raise ScreenerError(f"{where}: cannot extract ({e}); nothing was installed") from None
    return out_dir / top


def installed_version(path: Path) -> str | None:
    try:
        return json.loads((path / BUNDLE_METADATA).read_text()).get("version")
    except (OSError, ValueError, AttributeError):
        return None


def fetch(model, dest, zoo, force: bool = False) -> Path:
    """Fetch ``NAME[@VERSION]`` (latest by default) from ``zoo`` into ``dest/NAME``; returns that folder."""
    name, version = parse_model_spec(model)
    location = ZooLocation(zoo)
    index = location.read_index()
    key, entry = select(index, name, version, where=location.index_location())
    dest = Path(dest)
    target = dest / name
    if target.exists() and not force:
        have = installed_version(target)
        raise ScreenerError(
            f"{target}: already exists{f' (version {have})' if have else ''}; use --force to replace it"
        )
    created = not dest.exists()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ScreenerError(f"{dest}: cannot create folder ({e.strerror})") from None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.fetch-", dir=dest))
    except OSError as e:
        raise ScreenerError(f"{dest}: folder is not writable ({e.strerror})") from None
    try:
        source = location.source_of(entry["source"])
        zip_path = tmp / f"{key}.zip"
        download(source, zip_path, entry["checksum"], entry.get("size"))
        bundle = extract_bundle(zip_path, tmp / "x", name, source)
        got = installed_version(bundle)
        if got != entry["version"]:
            raise ScreenerError(
                f"{source}: bundle says version {got!r}, the index says {entry['version']}; nothing was installed"
            )
        if target.exists():
            os.replace(target, tmp / "old")
        os.replace(bundle, target)
    except BaseException:
        if (tmp / "old").exists() and not target.exists():
            os.replace(tmp / "old", target)  # put the replaced model back
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            try:
                dest.rmdir()
            except OSError:
                pass
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return target
