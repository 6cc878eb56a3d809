"""What medvit reads from a DICOM header besides the pixels: the defined terms that may reach an
output (anything else may be free text someone typed: PHI), and the modality rule that decides
whether a file is a mammogram (`modality_decision`, `check_modality`: `not_mammogram` unless
--any-modality). Used by preprocess (ingest, predict) and by the ingest journal's resume rule."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID

from medvit.errors import DicomError

# Defined terms only reach outputs: a value outside them may be free text someone typed (PHI).
PHOTOMETRICS = {"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "HSV", "ARGB", "CMYK",
                "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT"}
VIEWS = {  # ViewPosition: mammography views (RSNA: CC, MLO, ML, LM, AT, LMO) and radiography's
    "CC", "MLO", "ML", "LM", "LMO", "XCC", "XCCL", "XCCM", "FB", "SIO", "AT", "RL", "RM", "ID",
    "TAN", "SPOT", "MAG", "CV", "AP", "PA", "LL", "RLD", "LLD", "RLO", "LLO", "LAO", "RAO"}


# Modality (0008,0060) defined terms (PS3.3 C.7.3.1.1.1); anything else is reported as "other".
MODALITIES = {
    "MG", "CR", "CT", "DX", "IO", "MR", "NM", "OT", "PT", "PX", "RF", "RG", "SC", "US", "XA", "XC",
    "ES", "GM", "OP", "OPT", "SM", "BDUS", "BMD", "DOC", "ECG", "EPS", "HD", "IVOCT", "IVUS", "KO",
    "LS", "OCT", "OSS", "PR", "REG", "RTIMAGE", "RTDOSE", "RTSTRUCT", "RTPLAN", "SEG", "SR", "TG", "XAPROTOCOL"}
# What a SOP class says when there is no Modality: the family label the manifest records, and
# whether it passes. Mammograms come under the MG, DX and CR classes (RSNA's files: DX For
# Presentation in the file meta only) and as Secondary Capture; the families listed after them
# are other modalities. Keys are exact UIDs or dot-delimited prefixes (".2" covers CT's .2.1, .2.2).
_SOP = "1.2.840.10008.5.1.4.1.1."
PASSING_SOP_FAMILIES = {  # exact UIDs
    _SOP + "1.2": "MG", _SOP + "1.2.1": "MG",            # digital mammography, presentation / processing
    _SOP + "13.1.3": "MG",                                # breast tomosynthesis
    _SOP + "13.1.4": "MG", _SOP + "13.1.5": "MG",        # breast projection, presentation / processing
    _SOP + "1.1": "DX", _SOP + "1.1.1": "DX",            # digital X-ray, presentation / processing
    _SOP + "1": "CR",                                     # computed radiography
    _SOP + "7": "SC", _SOP + "7.1": "SC", _SOP + "7.2": "SC", _SOP + "7.3": "SC", _SOP + "7.4": "SC",
}
REFUSED_SOP_FAMILIES = {  # prefixes: the other modalities, for the label
    "1.3": "IO", "2": "CT", "4": "MR", "3.1": "US", "6": "US", "20": "NM", "128": "PT", "130": "PT",
    "481": "RT", "88": "SR", "104": "DOC", "11": "PR", "12": "XA", "13.1.1": "XA", "13.1.2": "XA",
    "77": "VL", "14": "OCT", "9": "ECG"}


@dataclass(frozen=True)
class ModalityDecision:
    """What `check_modality` decided from the header. `label` is what the manifest's and
    predict's `modality` column record: the Modality as a defined term ("MG", "CT"; "other" for
    free text, which may be PHI), or, with no Modality, "(none; DX SOP class)" style text naming
    the SOP class family (the dataset's SOPClassUID, else the file meta's
    MediaStorageSOPClassUID), "(none; no SOP class)" when neither is there."""

    label: str
    mammogram: bool
    why: str  # PHI-free: defined terms and pydicom's own UID names only


def sop_family(uid: str) -> tuple[str, bool]:
    """(family label, passes) of a SOP class UID: MG/DX/CR/SC pass; a known other modality
    (CT, MR, US, ...), any other registered class ("other") and an unregistered or private one
    ("unknown") are refused: `check_modality` stands between a model and files it was not
    trained on, so what it cannot place is refused (and `--any-modality` is the way through)."""
    if uid in PASSING_SOP_FAMILIES:
        return PASSING_SOP_FAMILIES[uid], True
    if uid.startswith(_SOP):
        rest = uid[len(_SOP):]
        for prefix in sorted(REFUSED_SOP_FAMILIES, key=len, reverse=True):
            if rest == prefix or rest.startswith(prefix + "."):
                return REFUSED_SOP_FAMILIES[prefix], False
    registered = UID(uid).name != uid
    return ("other" if registered else "unknown"), False


def modality_decision(ds: Dataset) -> ModalityDecision:
    """The modality rule (see `ModalityDecision`): an explicit Modality other than MG, or a SOP
    class of another modality, is not a mammogram; MG, DX, CR and SC SOP classes with no
    Modality are, and so is a file that names neither."""
    modality = modality_of_tag(ds)
    if modality:
        return ModalityDecision(modality, modality == "MG", f"Modality {modality}, not MG")
    sop = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", "") or "").strip()
    if not sop:
        return ModalityDecision("(none; no SOP class)", True, "")
    family, passes = sop_family(sop)
    label = f"(none; {family} SOP class)"
    if family == "unknown":
        why = "no Modality and an unknown or private SOP class"
    else:
        name = UID(sop).name
        why = f"no Modality and a {family} SOP class" + (f" ({name})" if name != sop else "")
    return ModalityDecision(label, passes, why)


def modality_of_tag(ds: Dataset) -> str:
    """The Modality tag as a defined term ("MG", "CT", ...), "other" for a value outside them
    (free text can be PHI), "" when the tag is absent or empty."""
    raw = str(ds.get("Modality", "") or "").strip().upper()
    return "" if not raw else (raw if raw in MODALITIES else "other")


def modality_of(ds: Dataset) -> str:
    """What decided the modality, as the manifest's `modality` column records it (`ModalityDecision.label`)."""
    return modality_decision(ds).label


def check_modality(ds: Dataset, path: str | Path, any_modality: bool = False) -> None:
    """Refuse (`not_mammogram`) what is not a mammogram by `modality_decision`, unless
    `any_modality`. The label travels on the error (`DicomError.info`) for the manifest."""
    decision = modality_decision(ds)
    if any_modality or decision.mammogram:
        return
    raise DicomError(path, "not_mammogram", f"{decision.why}; pass --any-modality to ingest or predict to accept it",
                     info={"modality": decision.label})


def accepted_only_with_any_modality(label: str) -> bool:
    """True when a file with this `modality` label passes only under --any-modality (resume:
    such a file is redone when the flag is turned off)."""
    if label == "MG" or label == "(none; no SOP class)" or not label:
        return False
    if label.startswith("(none; ") and label.endswith(" SOP class)"):
        return label[len("(none; "):-len(" SOP class)")] not in set(PASSING_SOP_FAMILIES.values())
    return True


def defined_term(value: object, terms: set[str]) -> str:
    """`value` (stripped, upper case) if it is one of `terms`, else ''."""
    text = str(value or "").strip().upper()
    return text if text in terms else ""
