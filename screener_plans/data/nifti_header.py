"""NIfTI header sniffing from the first bytes of a file (no nibabel needed)."""


def is_nifti_header(head: bytes) -> bool:
    """True when 4 bytes start a NIfTI-1 or NIfTI-2 header (``sizeof_hdr`` 348 or 540)."""
    return len(head) >= 4 and (
        int.from_bytes(head[:4], "little") in (348, 540) or int.from_bytes(head[:4], "big") in (348, 540)
    )


def is_nifti2(head: bytes) -> bool:
    """True when a NIfTI file's first 4 bytes (``sizeof_hdr``) say NIfTI-2 (540, either endianness)."""
    return 540 in (int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big"))
