"""DICOM-SEG segments carry real codes: SNOMED CT anatomy from the class names (with
laterality), "Tissue" only when nothing fits, and napari-vnet, its version and the model's
name as the algorithm."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest

from napari_vnet import __version__
from napari_vnet.io import read_volume
from napari_vnet.io.dicom_codes import segment_codes, table_keywords
from napari_vnet.models import ClassInfo, ModelCard
from test_io_dicom import write_dicom_series

hd = pytest.importorskip("highdicom")  # the dicom-seg extra (in the test group)
pydicom = pytest.importorskip("pydicom")
codes = pytest.importorskip("pydicom.sr.codedict").codes

ANATOMY, TISSUE, ABNORMAL = "91723000", "85756007", "49755003"
LEFT, RIGHT, BOTH = "7771000", "24028007", "51440002"

# class name (as the starter models and TotalSegmentator spell them) -> (category, type, side)
EXPECTED = {
    "liver": (ANATOMY, "10200004", None),
    "spleen": (ANATOMY, "78961009", None),
    "kidney_left": (ANATOMY, "64033007", LEFT),
    "kidney_right": (ANATOMY, "64033007", RIGHT),
    "kidneys": (ANATOMY, "64033007", BOTH),
    "stomach": (ANATOMY, "69695003", None),
    "pancreas": (ANATOMY, "15776009", None),
    "gallbladder": (ANATOMY, "28231008", None),
    "aorta": (ANATOMY, "15825003", None),
    "vertebrae": (ANATOMY, "51282000", None),
    "vertebrae_L3": (ANATOMY, "51282000", None),
    "spine": (ANATOMY, "421060004", None),
    "spinal_cord": (ANATOMY, "2748008", None),
    "heart": (ANATOMY, "80891009", None),
    "lung_upper_lobe_left": (ANATOMY, "39607008", LEFT),
    "urinary_bladder": (ANATOMY, "89837001", None),
    "esophagus": (ANATOMY, "32849002", None),
    "duodenum": (ANATOMY, "38848004", None),
    "adrenal_gland_right": (ANATOMY, "23451007", RIGHT),
    "colon": (ANATOMY, "71854001", None),
    "small_bowel": (ANATOMY, "30315005", None),
    "inferior_vena_cava": (ANATOMY, "64131007", None),
    "portal_vein_and_splenic_vein": (ANATOMY, "32764006", None),
    "brain": (ANATOMY, "12738006", None),
    "rib_right_4": (ANATOMY, "113197003", RIGHT),
    "autochthon_left": (ANATOMY, "44947003", LEFT),
    "kidney_cyst_left": (ABNORMAL, "367643001", LEFT),
    "liver tumour": (ABNORMAL, "108369006", None),
    "gluteus_maximus_right": (TISSUE, "127954009", RIGHT),
    "mystery blob": (TISSUE, TISSUE, None),
    "foreground": (TISSUE, TISSUE, None),
    "class_3": (TISSUE, TISSUE, None),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_class_names_get_their_snomed_codes(name):
    category, kind, side = EXPECTED[name]
    coded = segment_codes(name)
    assert (coded.category.value, coded.type.value) == (category, kind)
    assert all(c.scheme_designator == "SCT" for c in (coded.category, coded.type))
    assert (coded.modifier.value if coded.modifier else None) == side


def test_every_code_of_the_table_is_one_of_dicoms():
    """Each keyword names a code of DICOM's own dictionary (as pydicom ships it)."""
    assert not [k for k in table_keywords() if not hasattr(codes.SCT, k)]


def test_every_shipped_model_class_has_a_code():
    from napari_vnet.weights.loading import read_weights_card

    weights = glob.glob(str(Path(__file__).parents[1] / "src/napari_vnet/weights/*.pt"))
    assert weights
    for path in weights:
        for c in read_weights_card(path).classes[1:]:
            assert segment_codes(c.name).type.value != TISSUE, (path, c.name)


def _card() -> ModelCard:
    return ModelCard(
        arch="unet3d",
        classes=[
            ClassInfo(0, "background"),
            ClassInfo(5, "liver"),
            ClassInfo(1, "spleen"),
            ClassInfo(3, "kidney_left"),
            ClassInfo(7, "mystery blob"),
        ],
    )


def test_dicom_seg_segments_are_coded_and_name_the_algorithm(tmp_path):
    from napari_vnet.io.dicom_seg import read_dicom_seg, write_dicom_seg

    ct = (np.arange(4 * 12 * 10).reshape(4, 12, 10) % 200).astype(np.int16)
    write_dicom_series(tmp_path / "ct", ct, uid="1.2.826.0.1.77", description="CT")
    for f in (tmp_path / "ct").iterdir():  # a CT image needs its frame of reference
        ds = pydicom.dcmread(f)
        ds.FrameOfReferenceUID = "1.2.826.0.1.77.1"
        ds.save_as(f)
    vol = read_volume(tmp_path / "ct")
    labels = np.zeros(vol.shape, np.uint8)
    labels[1:3, 2:6, 2:5] = 5
    labels[0:2, 7:10, 6:9] = 1
    labels[3, 1:4, 1:4] = 3
    labels[2:4, 8:11, 1:3] = 7
    path = write_dicom_seg(labels, vol, _card(), tmp_path / "seg.dcm", weights="/m/my-model.pt")

    ds = pydicom.dcmread(path)
    segments = {s.SegmentLabel: s for s in ds.SegmentSequence}
    assert list(segments) == ["liver", "spleen", "kidney_left", "mystery blob"]
    for name, segment in segments.items():
        category, kind, side = EXPECTED[name]
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == category
        type_item = segment.SegmentedPropertyTypeCodeSequence[0]
        assert (type_item.CodeValue, type_item.CodingSchemeDesignator) == (kind, "SCT")
        modifiers = type_item.get("SegmentedPropertyTypeModifierCodeSequence") or []
        assert [m.CodeValue for m in modifiers] == ([side] if side else [])
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "napari-vnet"
        assert algorithm.AlgorithmVersion == __version__
        assert algorithm.AlgorithmSource == "my-model"
        assert "my-model" in algorithm.AlgorithmParameters
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segments["mystery blob"].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Tissue"

    # highdicom's own reader sees the same codes
    seg = hd.seg.segread(path)
    described = {
        seg.get_segment_description(n).segment_label: seg.get_segment_description(n)
        for n in seg.segment_numbers
    }
    assert described["liver"].segmented_property_type == codes.SCT.Liver
    assert described["spleen"].segmented_property_type == codes.SCT.Spleen
    assert described["kidney_left"].segmented_property_type == codes.SCT.Kidney
    assert described["liver"].segmented_property_category == codes.SCT.AnatomicalStructure
    assert described["mystery blob"].segmented_property_type == codes.SCT.Tissue
    assert described["mystery blob"].segmented_property_category == codes.SCT.Tissue
    assert described["liver"].algorithm_identification[0].AlgorithmName == "napari-vnet"

    # and the labels still come back with their values
    back = read_dicom_seg(path, source=tmp_path / "ct")
    np.testing.assert_array_equal(back.array, labels)
