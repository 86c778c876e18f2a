"""MONAI's NIfTI reader with ``.nii.gz`` files inflated in one call by ``gzip_codec``.

nibabel streams a ``.nii.gz`` through Python's zlib; inflating the whole file at once through
ISA-L and handing nibabel the bytes reads a 512x512x300 int16 scan about twice as fast. The
image nibabel builds from the bytes is the one it builds from the file, so MONAI's
``get_data`` (orientation, affine, metadata) is unchanged.
"""

from __future__ import annotations

import nibabel as nib
from monai.data import NibabelReader
from monai.data.utils import correct_nifti_header_if_necessary
from monai.utils import ensure_tuple

from screener_plans.data.nifti_header import is_nifti2
from screener_plans.gzip_codec import decompress


def nifti_from_gz(path) -> nib.Nifti1Image:
    """The NIfTI-1 or NIfTI-2 image in a ``.nii.gz`` file, held in memory."""
    with open(path, "rb") as f:
        raw = decompress(f.read())
    cls = nib.Nifti2Image if is_nifti2(raw) else nib.Nifti1Image
    return cls.from_bytes(raw)


class GzipNibabelReader(NibabelReader):
    """``NibabelReader`` whose ``read`` inflates ``.nii.gz`` files with ``gzip_codec``; other
    files, and reads with extra ``nibabel.load`` arguments, go through MONAI's own ``read``."""

    def read(self, data, **kwargs):
        names = ensure_tuple(data)
        if kwargs or self.kwargs or not all(str(n).lower().endswith(".nii.gz") for n in names):
            return super().read(data, **kwargs)
        self.filenames = names
        images = [correct_nifti_header_if_necessary(nifti_from_gz(n)) for n in names]
        return images if len(names) > 1 else images[0]
