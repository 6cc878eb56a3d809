"""medvit.errors: DicomError details never carry quoted header values (PHI) into outputs."""
from __future__ import annotations

from medvit.errors import DicomError, scrub_quoted


def test_dicom_error_scrubs_quoted_values_but_keeps_uids():
    detail = ("ValueError: invalid value 'MEDVITPHI^Jane' for VR DA: b'19700101' in syntax "
              "'1.2.840.10008.1.2.4.90' (\"MEDVITPHI Hospital\")")
    err = DicomError("a/b.dcm", "decode_failed", detail)
    assert "MEDVITPHI" not in str(err) and "19700101" not in err.detail
    assert "'1.2.840.10008.1.2.4.90'" in err.detail and err.detail.startswith("ValueError: invalid value '…'")
    assert str(err).startswith("a/b.dcm: decode_failed (")
    assert scrub_quoted("no quotes here") == "no quotes here"
