"""What a class name means, as the SNOMED CT codes a DICOM segment carries.

:func:`segment_codes` turns a model card's class name ("liver", "kidney_left",
"vertebrae_L3", "lung_upper_lobe_right", "kidney_cyst_left", "kidneys") into a segmented
property category (anatomical structure, tissue or morphologically abnormal structure),
a segmented property type (the organ, tissue or finding) and, for a left, right or
paired organ, a laterality modifier. The names the starter models and TotalSegmentator
use are in the table; a name that fits none of it is "Tissue" (category and type).

The codes are DICOM's own (PS3.16 context groups, as pydicom ships them in
``pydicom.sr.codedict.codes.SCT``), looked up by their keyword; only the category
"Morphologically Abnormal Structure" (SCT 49755003, CID 7150) is spelt out here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

ANATOMY, TISSUE, FINDING = "AnatomicalStructure", "Tissue", "finding"

# words of a class name -> keyword of codes.SCT (the words lower-case, "_" and "-" as " ")
_ANATOMY = {
    "liver": "Liver", "spleen": "Spleen", "kidney": "Kidney", "stomach": "Stomach",
    "pancreas": "Pancreas", "gallbladder": "Gallbladder", "gall bladder": "Gallbladder",
    "aorta": "Aorta", "abdominal aorta": "AbdominalAorta", "heart": "Heart", "lung": "Lung",
    "vertebra": "Vertebra", "vertebrae": "Vertebra", "spine": "Spine",
    "vertebral column": "Spine", "spinal column": "Spine", "spinal cord": "SpinalCord",
    "urinary bladder": "Bladder", "bladder": "Bladder", "esophagus": "Esophagus",
    "oesophagus": "Esophagus", "duodenum": "Duodenum", "adrenal gland": "AdrenalGland",
    "adrenal": "AdrenalGland", "colon": "Colon", "small bowel": "SmallIntestine",
    "small intestine": "SmallIntestine", "large bowel": "LargeIntestine",
    "large intestine": "LargeIntestine", "rectum": "Rectum", "sigmoid colon": "SigmoidColon",
    "cecum": "Cecum", "appendix": "Appendix", "ileum": "Ileum", "jejunum": "Jejunum",
    "inferior vena cava": "InferiorVenaCava", "ivc": "InferiorVenaCava",
    "superior vena cava": "SuperiorVenaCava", "vena cava": "VenaCava",
    "portal vein": "PortalVein", "splenic vein": "SplenicVein", "hepatic vein": "HepaticVein",
    "pulmonary artery": "PulmonaryArtery", "pulmonary vein": "PulmonaryVein",
    "brachiocephalic trunk": "BrachiocephalicTrunk",
    "brachiocephalic vein": "BrachiocephalicVein", "subclavian artery": "SubclavianArtery",
    "common carotid artery": "CommonCarotidArtery", "iliac artery": "IliacArtery",
    "common iliac artery": "CommonIliacArtery", "iliac vein": "IliacVein",
    "iliac vena": "IliacVein", "common iliac vein": "CommonIliacVein",
    "left ventricle": "LeftVentricle", "right ventricle": "RightVentricle",
    "left atrium": "LeftAtrium", "right atrium": "RightAtrium", "brain": "Brain",
    "brain stem": "BrainStem", "brainstem": "BrainStem", "cerebellum": "Cerebellum",
    "trachea": "Trachea", "thyroid": "Thyroid", "thyroid gland": "Thyroid",
    "larynx": "Larynx", "pharynx": "Pharynx", "thymus": "Thymus", "prostate": "Prostate",
    "ureter": "Ureter", "urethra": "Urethra", "uterus": "Uterus", "ovary": "Ovary",
    "testis": "Testis", "breast": "Breast", "eye": "Eye", "lens": "Lens",
    "optic nerve": "OpticNerve", "parotid gland": "ParotidGland",
    "submandibular gland": "SubmandibularGland", "femur": "Femur", "humerus": "Humerus",
    "scapula": "Scapula", "clavicle": "Clavicle", "clavicula": "Clavicle", "rib": "Rib",
    "sternum": "Sternum", "costal cartilage": "CostalCartilage", "sacrum": "Sacrum",
    "coccyx": "Coccyx", "skull": "Skull", "mandible": "Mandible", "patella": "Patella",
    "tibia": "Tibia", "fibula": "Fibula", "radius": "Radius", "ulna": "Ulna",
    "ilium": "Ilium", "autochthon": "ErectorSpinaeMuscle",
    "erector spinae": "ErectorSpinaeMuscle",
}  # fmt: skip
_TISSUE = {
    "tissue": "Tissue", "bone": "Bone", "muscle": "SkeletalMuscle",
    "skeletal muscle": "SkeletalMuscle", "gluteus": "SkeletalMuscle",
    "iliopsoas": "SkeletalMuscle", "psoas": "SkeletalMuscle", "fat": "AdiposeTissue",
    "adipose tissue": "AdiposeTissue", "subcutaneous fat": "AdiposeTissue",
    "visceral fat": "AdiposeTissue", "skin": "Skin", "cartilage": "Cartilage",
}  # fmt: skip
_FINDING = {
    "tumor": "Tumor", "tumour": "Tumor", "neoplasm": "Neoplasm", "lesion": "Lesion",
    "cyst": "Cyst", "nodule": "Nodule", "metastasis": "Metastasis",
    "metastases": "Metastasis", "mass": "Mass", "hemorrhage": "Hemorrhage",
    "haemorrhage": "Hemorrhage", "edema": "Edema", "oedema": "Edema",
    "necrosis": "Necrosis",
}  # fmt: skip
_TABLE = {
    **{k: (ANATOMY, v) for k, v in _ANATOMY.items()},
    **{k: (TISSUE, v) for k, v in _TISSUE.items()},
    **{k: (FINDING, v) for k, v in _FINDING.items()},
}
_PAIRED = {"Kidney", "Lung", "AdrenalGland", "Ovary", "Testis", "Eye", "Breast", "Femur",
           "Humerus", "Scapula", "Clavicle", "ParotidGland", "SubmandibularGland"}  # fmt: skip
_SIDES = {"left": "Left", "lt": "Left", "right": "Right", "rt": "Right"}
_LEVEL = re.compile(r"^[a-z]?\d+$")  # vertebra/rib numbers: L3, T12, C1, S1, 7


@dataclass(frozen=True)
class SegmentCodes:
    """The codes of one segment: ``category``, ``type`` and, where the name says a side
    (or a pair), the ``modifier`` of the type (pydicom ``Code`` objects)."""

    category: Any
    type: Any
    modifier: Any = None


def _words(name: str) -> list[str]:
    """Lower-case words of a class name ("kidney_left", "KidneyLeft", "Vertebrae L3"),
    numbers and vertebra levels left out."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", str(name))
    words = re.split(r"[^a-z0-9]+", spaced.lower())
    return [w for w in words if w and not _LEVEL.match(w)]


def _side(words: list[str]) -> tuple[str | None, list[str]]:
    """(the side a name says, its words without it): "left"/"right" anywhere, or a
    trailing "l"/"r" ("kidney_l")."""
    side = None
    if len(words) > 1 and words[-1] in ("l", "r"):
        side, words = ("Left" if words[-1] == "l" else "Right"), words[:-1]
    rest = []
    for w in words:
        if w in _SIDES:
            side = _SIDES[w]
        else:
            rest.append(w)
    return side, rest


def _find(words: list[str]) -> tuple[tuple[str, str] | None, bool]:
    """((category kind, keyword) or None, whether a plural named a pair)."""
    phrase = " ".join(words)
    if phrase in _TABLE:
        return _TABLE[phrase], False
    if phrase.endswith("s") and phrase[:-1] in _TABLE:  # kidneys, lungs, ribs
        return _TABLE[phrase[:-1]], True
    for w in words:  # "kidney cyst", "liver tumor": the finding
        if w in _FINDING:
            return _TABLE[w], False
    for n in range(len(words) - 1, 0, -1):  # "lung upper lobe": the organ named first
        if " ".join(words[:n]) in _TABLE:
            return _TABLE[" ".join(words[:n])], False
    return None, False


def segment_codes(name: str) -> SegmentCodes:
    """The SNOMED CT category, type and laterality of a class named ``name``
    (see the module docstring); "Tissue"/"Tissue" when no entry fits."""
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    words = _words(name)
    found, pair, side = _TABLE.get(" ".join(words)), False, None  # "left ventricle"
    if found is None:
        side, words = _side(words)
        found, pair = _find(words)
    if found is None:
        return SegmentCodes(codes.SCT.Tissue, codes.SCT.Tissue)
    kind, keyword = found
    category = (
        Code("49755003", "SCT", "Morphologically Abnormal Structure")
        if kind == FINDING
        else getattr(codes.SCT, kind)
    )
    if pair and keyword in _PAIRED:
        side = "RightAndLeft"
    modifier = getattr(codes.SCT, side) if side else None
    return SegmentCodes(category, getattr(codes.SCT, keyword), modifier)


def table_keywords() -> set[str]:
    """Every codes.SCT keyword the table names (for a test that each one exists)."""
    return {kw for _, kw in _TABLE.values()} | set(_SIDES.values()) | {"RightAndLeft", ANATOMY}
