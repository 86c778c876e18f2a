"""Find CT cases in a folder and read them with MONAI's readers.

A case is one file (NIfTI, NRRD, MHA/MHD) or one folder holding a DICOM series. Every case is
returned as a float32 array in the file's voxel order together with its RAS affine; nothing is
resampled here.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from screener_plans.data.nifti_header import is_nifti2, is_nifti_header
from screener_plans.errors import BadCaseError, ScreenerError

logger = logging.getLogger(__name__)

# extension -> MONAI reader name; longest suffix wins (".nii.gz" before ".gz").
READERS = {
    ".nii.gz": "NibabelReader",
    ".nii": "NibabelReader",
    ".nrrd": "NrrdReader",
    ".nhdr": "NrrdReader",
    ".mha": "ITKReader",
    ".mhd": "ITKReader",
    ".dcm": "PydicomReader",
}
# Files that live next to images without being cases themselves.
SIDECAR_SUFFIXES = {".raw", ".zraw", ".json", ".txt", ".csv", ".md", ".yaml", ".yml", ".log", ".png", ".jpg"}
EXTRA_FOR_READER = {"NrrdReader": "pynrrd", "ITKReader": "itk-io", "PydicomReader": "pydicom"}


@dataclass(frozen=True)
class CaseSource:
    """Where a case lives: ``kind`` is 'file' or 'dicom'; ``files`` lists a DICOM series' slices."""

    name: str
    path: str
    kind: str
    reader: str
    files: tuple = ()

    def signature(self) -> dict:
        """Path, total size and newest mtime: enough to tell whether a cached result is stale."""
        paths = self.files or (self.path,)
        if self.reader == "ITKReader" and self.path.lower().endswith(".mhd"):
            paths = tuple(paths) + tuple(_mhd_data_files(self.path))
        size, mtime = 0, 0
        for p in paths:
            st = os.stat(p)
            size += st.st_size
            mtime = max(mtime, st.st_mtime_ns)
        return {"path": os.path.abspath(self.path), "size": size, "mtime_ns": mtime}


@dataclass
class CaseImage:
    """A case read from disk: voxel array (file order), RAS affine and reader metadata."""

    name: str
    path: str
    array: np.ndarray
    affine: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def spacing(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))


def case_name(path: str | Path) -> str:
    """A case's name: its file or folder name without extension."""
    name = Path(path).name
    low = name.lower()
    for ext in sorted(READERS, key=len, reverse=True):
        if low.endswith(ext):
            return name[: -len(ext)]
    return name


def _suffix(path: str) -> str:
    low = path.lower()
    for ext in sorted(READERS, key=len, reverse=True):
        if low.endswith(ext):
            return ext
    return Path(low).suffix


def _mhd_named_data_file(path: str) -> Path | None:
    """The separate data file a MetaImage header names (None: data inside, or a file list/pattern)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r"ElementDataFile\s*=\s*(\S+)", text)
    if not m or m.group(1).upper() in ("LOCAL", "LIST") or "%" in m.group(1):
        return None
    return Path(path).parent / m.group(1)


def _mhd_data_files(path: str) -> list[str]:
    data = _mhd_named_data_file(path)
    return [str(data)] if data is not None and data.exists() else []


def _mhd_missing_data_file(path: str) -> str | None:
    data = _mhd_named_data_file(path)
    return str(data) if data is not None and not data.exists() else None


def _is_dicom_file(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _is(entry: os.DirEntry, kind: str) -> bool:
    """``entry.is_file()`` / ``is_dir()``, False for a link that loops or cannot be followed."""
    try:
        return entry.is_file() if kind == "file" else entry.is_dir()
    except OSError:
        return False


def _dicom_files(folder: str) -> list[str]:
    out = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if (
            _is(entry, "file")
            and not entry.name.startswith(".")
            and (entry.name.lower().endswith(".dcm") or _is_dicom_file(entry.path))
        ):
            out.append(entry.path)
    return out


def _holds_images(folder: str) -> bool:
    try:
        return any(_suffix(e.name) in READERS and _is(e, "file") for e in os.scandir(folder))
    except OSError:
        return False


def _broken_link(path: str) -> str:
    return f"broken link to {os.readlink(path)} (missing target or a loop)"


def _holds_predictions(folder: str) -> bool:
    """True for a folder `screener predict` wrote (anomaly maps beside their ``_regions.json``)."""
    try:
        return any(e.name.endswith("_regions.json") for e in os.scandir(folder))
    except OSError:
        return False


def _image_folder_in(folder: str) -> str | None:
    """``folder`` or a direct subfolder (e.g. ``test/images``) that holds image files, if any."""
    if _holds_images(folder):
        return folder
    try:
        subs = sorted(e.path for e in os.scandir(folder) if _is(e, "dir") and not e.name.startswith("."))
    except OSError:
        return None
    return next((d for d in subs if _holds_images(d)), None)


def find_cases(data_dir: str | Path, with_bad: bool = False):
    """List the cases in ``data_dir``, sorted by name.

    Files with an unsupported extension are reported as bad cases (``BadCaseError``) rather than
    silently ignored, so a user learns why a scan is missing. Returns ``cases`` or, with
    ``with_bad=True``, ``(cases, bad)``.
    """
    data_dir = Path(data_dir)
    if data_dir.is_symlink() and not data_dir.exists():
        raise ScreenerError(f"{data_dir}: {_broken_link(str(data_dir))}")
    if not data_dir.exists():
        what = "file" if _suffix(str(data_dir)) in READERS else "data folder"
        raise ScreenerError(f"{data_dir}: {what} does not exist")
    if not data_dir.is_dir():
        # A single file is a valid input for prediction.
        suffix = _suffix(str(data_dir))
        if suffix in READERS and suffix != ".dcm":
            cases = [CaseSource(case_name(data_dir), str(data_dir), "file", READERS[suffix])]
            return (cases, []) if with_bad else cases
        raise ScreenerError(f"{data_dir}: not a folder and not a supported image file")
    cases, bad = [], []
    direct = _dicom_files(str(data_dir))
    if direct:  # the folder is itself one DICOM series
        cases = [CaseSource(data_dir.name, str(data_dir), "dicom", "PydicomReader", tuple(direct))]
        return (cases, []) if with_bad else cases
    for entry in sorted(os.scandir(data_dir), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_symlink() and not os.path.exists(entry.path):
            bad.append(BadCaseError(entry.path, _broken_link(entry.path)))
            continue
        if _is(entry, "dir"):
            if _holds_predictions(entry.path):
                continue  # `screener predict`'s output folder, placed inside its input folder
            files = _dicom_files(entry.path)
            if files:
                cases.append(CaseSource(entry.name, entry.path, "dicom", "PydicomReader", tuple(files)))
            elif (images := _image_folder_in(entry.path)) is not None:  # DATA given where DATA/train was meant
                what = (
                    "a folder of image files inside the data folder; give it"
                    if images == entry.path
                    else f"image files are in {images}; give that folder"
                )
                bad.append(
                    BadCaseError(entry.path, f"{what} as the data folder itself (cases are files or DICOM folders)")
                )
            else:
                bad.append(BadCaseError(entry.path, "folder holds no DICOM files"))
            continue
        suffix = _suffix(entry.name)
        if suffix in READERS and suffix != ".dcm":
            cases.append(CaseSource(case_name(entry.name), entry.path, "file", READERS[suffix]))
        elif suffix in SIDECAR_SUFFIXES:
            continue
        else:
            bad.append(
                BadCaseError(
                    entry.path,
                    f"unsupported format '{suffix or entry.name}' "
                    "(expected .nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd or a DICOM folder)",
                )
            )
    names = [c.name for c in cases]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ScreenerError(f"{data_dir}: several files share the case name(s) {', '.join(dupes)}")
    return (cases, bad) if with_bad else cases


def _select_dicom_series(case: CaseSource) -> tuple[list[str], str]:
    """Group a folder's slices by SeriesInstanceUID and keep the largest CT series."""
    import pydicom

    series: dict[str, list[str]] = {}
    modality: dict[str, str] = {}
    geometry: dict[str, tuple] = {}
    for f in case.files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as e:  # a single broken slice should name itself
            raise BadCaseError(f, f"unreadable DICOM file ({type(e).__name__})") from None
        uid = str(getattr(ds, "SeriesInstanceUID", "unknown"))
        series.setdefault(uid, []).append(f)
        modality[uid] = str(getattr(ds, "Modality", "")).upper()
        geometry[f] = (getattr(ds, "ImagePositionPatient", None), getattr(ds, "ImageOrientationPatient", None))
    ct = {uid: fs for uid, fs in series.items() if modality[uid] in ("CT", "")}
    if not ct:
        found = ", ".join(sorted(set(modality.values())))
        raise BadCaseError(case.path, f"no CT series in the folder (modalities found: {found}); not a CT scan")
    uid = max(ct, key=lambda u: len(ct[u]))
    note = ""
    if len(series) > 1:
        note = f"folder holds {len(series)} series; using the largest CT series {uid} ({len(ct[uid])} slices)"
        logger.warning("%s: %s", case.path, note)
    check_slice_positions(case.path, {f: geometry[f] for f in ct[uid]})
    return sorted(ct[uid]), note


def check_slice_positions(folder: str, geometry: dict) -> None:
    """Refuse a series with a missing or repeated slice: the reader would spread the slices
    evenly over the gap (or stack the copy), shifting every position after it."""
    try:
        normal = np.cross(*np.asarray([float(v) for v in next(iter(geometry.values()))[1]]).reshape(2, 3))
        where = sorted((float(np.dot(normal, [float(v) for v in ipp])), f) for f, (ipp, _) in geometry.items())
    except (TypeError, ValueError, StopIteration):
        return  # no position tags: nothing to check against
    if len(where) < 3:
        return
    gaps = np.diff([z for z, _ in where])
    step = float(np.median(gaps))
    for i, gap in enumerate(gaps):
        a, b = os.path.basename(where[i][1]), os.path.basename(where[i + 1][1])
        if gap < max(1e-3, 0.01 * step):
            raise BadCaseError(
                folder,
                f"two slices at the same position ({a} and {b}, {where[i][0]:.2f} mm along "
                "the slice normal): a slice copied twice, or two series with one UID",
            )
        if step > 0 and abs(gap - step) > 0.2 * step:
            raise BadCaseError(
                folder,
                f"uneven slice spacing: {gap:.2f} mm between {a} and {b}, {step:.2f} mm elsewhere (a missing slice?)",
            )


def diagnose_unreadable(path: str) -> str | None:
    """A specific reason why a file MONAI could not read is broken, when one can be found."""
    import gzip
    import zlib

    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    gzipped, nifti = head[:2] == b"\x1f\x8b", is_nifti_header(head)
    low = path.lower()
    if low.endswith(".nii.gz") and nifti:
        return "not gzip-compressed although named .nii.gz (an uncompressed NIfTI: rename it to .nii)"
    if low.endswith(".nii") and gzipped:
        return "gzip-compressed although named .nii (rename it to .nii.gz)"
    if _suffix(path) == ".mhd":
        missing = _mhd_missing_data_file(path)
        if missing:
            return f"the data file {missing} named by its header (ElementDataFile) is missing"
    if low.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                while f.read(1 << 24):
                    pass
        except EOFError:
            return "corrupt or truncated file (the gzip stream ends early)"
        except (gzip.BadGzipFile, zlib.error, OSError) as e:
            return f"corrupt or truncated file (not valid gzip: {e})"
    if READERS.get(_suffix(path)) == "NibabelReader":
        import nibabel as nib

        try:
            img = nib.load(path)
        except Exception as e:
            return f"not a valid NIfTI file ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
        try:
            np.asanyarray(img.dataobj[..., :1] if img.ndim > 0 else img.dataobj)
            img.get_fdata(dtype=np.float32)
        except Exception as e:
            return f"corrupt or truncated file (pixel data unreadable: {type(e).__name__})"
    return None


def _raw_nifti_pixdim(path: str) -> list[float] | None:
    import gzip

    import nibabel as nib

    opener = gzip.open if path.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            f.seek(0)
            cls = nib.Nifti2Header if is_nifti2(head) else nib.Nifti1Header
            hdr = cls.from_fileobj(f, check=False)
        return [float(v) for v in np.asarray(hdr["pixdim"]).ravel()[:4]]
    except Exception:
        return None


def reader_class(name: str):
    """The MONAI reader class called ``name``; NIfTI goes through ``GzipNibabelReader``."""
    import monai.data

    if name == "NibabelReader":
        from screener_plans.data.nifti_reader import GzipNibabelReader

        return GzipNibabelReader
    return getattr(monai.data, name)


def read_case(case: CaseSource) -> CaseImage:
    """Read one case with MONAI's reader for its format; errors name the file and the problem."""
    meta: dict = {}
    target: object = case.path
    reader_kwargs: dict = {}
    files: list[str] = []
    if case.kind == "dicom":
        files, note = _select_dicom_series(case)
        if note:
            meta["series_note"] = note
        # Restrict MONAI's folder reader to the chosen series' files.
        reader_kwargs["fname_regex"] = "^(" + "|".join(re.escape(f) for f in files) + ")$"
        meta["n_slices"] = len(files)
    try:
        size = os.path.getsize(case.path) if case.kind == "file" else 1
    except OSError as e:
        if os.path.islink(case.path):
            raise BadCaseError(case.path, _broken_link(case.path)) from None
        raise BadCaseError(case.path, f"cannot be read ({e.strerror})") from None
    if size == 0:
        raise BadCaseError(case.path, "empty file")
    if case.kind == "file" and not os.access(case.path, os.R_OK):
        raise BadCaseError(case.path, "permission denied")
    # MONAI's reader classes, called directly: LoadImage around them adds a MetaTensor and
    # copies that cost more than the read itself on a 512x512x300 scan (2.7 s vs 0.8 s).
    from monai.utils import OptionalImportError

    unavailable = (
        f"MONAI's {case.reader} is unavailable; install it with: "
        f"pip install 'screener[formats]' ({EXTRA_FOR_READER.get(case.reader, '')})"
    )
    try:
        with warnings.catch_warnings():
            # MONAI announces optional GPU decoders it cannot find; irrelevant to users here.
            warnings.simplefilter("ignore")
            logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
            reader = reader_class(case.reader)(**reader_kwargs)
            data, img_meta = reader.get_data(reader.read(target))
    except (OptionalImportError, ImportError) as e:
        raise BadCaseError(case.path, f"{unavailable} [{e}]") from None
    except BadCaseError:
        raise
    except Exception as e:
        reason = diagnose_unreadable(case.path) if case.kind == "file" else None
        if reason is None:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            reason = f"unreadable image ({type(e).__name__}: {msg[:160]})"
        raise BadCaseError(case.path, reason) from None
    array = np.asarray(data, dtype=np.float32)
    affine = np.asarray(img_meta["affine"], dtype=np.float64)
    if case.reader == "NibabelReader":
        # nibabel silently replaces zero spacings by 1 on load; the raw header tells the truth.
        meta["pixdim"] = _raw_nifti_pixdim(case.path)
    if case.kind == "dicom":
        import pydicom

        ds = pydicom.dcmread(files[0], stop_before_pixels=True)  # a slice of the series actually read
        meta["dicom_rescale"] = hasattr(ds, "RescaleIntercept") or hasattr(ds, "RescaleSlope")
        meta["modality"] = str(getattr(ds, "Modality", ""))
    return CaseImage(case.name, case.path, array, affine, meta)
