"""Write small DICOM CT series with pydicom (used by reader tests)."""

from __future__ import annotations

import numpy as np


def write_dicom_series(
    folder,
    hu,
    spacing=(1.0, 1.0, 2.0),
    series_uid=None,
    modality="CT",
    rescale=True,
    study_uid="1.2.826.0.1.3680043.8.498.1",
):
    """Write HU volume (X, Y, Z) as one slice per file; rows run along Y, columns along X (LPS)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    intercept = -1024.0 if rescale else 0.0
    stored = np.round(hu - intercept).astype(np.int32)
    stored = np.clip(stored, 0, 65535).astype(np.uint16)
    for z in range(hu.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"s{series_uid.replace('.', '')[-6:]}_{z:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.PatientID = "synthetic"
        ds.InstanceNumber = z + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(z * spacing[2])]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (Y), column spacing (X)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0
        if rescale:
            ds.RescaleIntercept = intercept
            ds.RescaleSlope = 1.0
        ds.PixelData = np.ascontiguousarray(stored[:, :, z].T).tobytes()
        pydicom.dcmwrite(str(path), ds, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return folder
