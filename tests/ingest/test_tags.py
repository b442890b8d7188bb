"""The tag snapshot routers see, read from encoded data sets without our receiver around it."""

import contextlib
import struct
from io import BytesIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmwrite
from pydicom.config import disable_value_validation
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from bench.dicom_data import CT_IMAGE_STORAGE, ct_instance, new_uid
from ingest.errors import CannotUnderstand
from ingest.part10 import read_file_meta
from ingest.tags import ROUTING_TAGS, Snapshot, TagReader, resolve_tag

READER = TagReader()


def encoded(ds: Dataset, syntax: str | None = None) -> tuple[bytes, str]:
    """The data set bytes of `ds` as a sender would transmit them, and their transfer syntax."""
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    buffer = BytesIO()
    with disable_value_validation():  # some stories send values a sender should not
        dcmwrite(buffer, ds, enforce_file_format=True)
    data = buffer.getvalue()
    meta = read_file_meta(data)
    return data[meta.dataset_offset :], meta.transfer_syntax_uid


def snapshot(ds: Dataset, syntax: str | None = None, reader: TagReader = READER) -> Snapshot:
    data, transfer_syntax = encoded(ds, syntax)
    return reader.read(data, transfer_syntax_uid=transfer_syntax, media_sop_class_uid="1.2.3")


def a_ct(**attributes: object) -> Dataset:
    return ct_instance(study_uid=new_uid(), series_uid=new_uid(), number=7, **attributes)


def test_every_routing_tag_is_in_the_snapshot_absent_ones_as_empty_text() -> None:
    ds = a_ct()

    tags = snapshot(ds).tags

    assert set(tags) == {*ROUTING_TAGS, "MediaStorageSOPClassUID"}
    assert tags["Modality"] == "CT"
    assert tags["ProtocolName"] == ""
    assert tags["MediaStorageSOPClassUID"] == "1.2.3"
    assert tags["SOPInstanceUID"] == ds.SOPInstanceUID
    assert tags["InstanceNumber"] == "7"
    assert tags["SliceThickness"] == "1.0"


def test_values_are_text_in_the_data_sets_character_set_multiple_values_joined() -> None:
    latin = snapshot(a_ct(PatientName="Müller^Jürgen"))
    utf8 = snapshot(a_ct(SpecificCharacterSet="ISO_IR 192", PatientName="Ἀθηνᾶ^Παλλάς"))

    assert latin.tags["PatientName"] == "Müller^Jürgen"
    assert utf8.tags["PatientName"] == "Ἀθηνᾶ^Παλλάς"
    assert latin.tags["ImageType"] == "ORIGINAL\\PRIMARY\\AXIAL"


def test_code_value_and_meaning_come_from_the_first_code_sequence() -> None:
    tags = snapshot(a_ct()).tags

    assert tags["CodeValue"] == "CTCHEST"
    assert tags["CodeMeaning"] == "CT of the chest"


def test_extra_tags_by_keyword_or_number_including_binary_values() -> None:
    reader = TagReader(["PatientAge", "(0028,0010)", "(0019,10A2)"])
    ds = a_ct(PatientAge="064Y")
    ds.private_block(0x0019, "ACME", create=True).add_new(0xA2, "LO", "secret sauce")

    tags = snapshot(ds, reader=reader).tags

    assert tags["PatientAge"] == "064Y"
    assert tags["Rows"] == "64"
    assert tags["(0019,10A2)"] == "secret sauce"


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_other_uncompressed_syntaxes_read_the_same(syntax: str) -> None:
    ds = a_ct()

    assert snapshot(ds, syntax).tags == snapshot(ds).tags


def test_unknown_names_are_refused_when_configured() -> None:
    with pytest.raises(ValueError, match="neither a DICOM keyword"):
        resolve_tag("PatientShoeSize")


@pytest.mark.parametrize("bad", ["../../x", "1..2", "1." + "2" * 70, ""])
def test_an_invalid_series_uid_cannot_be_understood(bad: str) -> None:
    ds = a_ct()
    with disable_value_validation():
        ds["SeriesInstanceUID"] = DataElement(0x0020000E, "UI", bad)

    with pytest.raises(CannotUnderstand, match="SeriesInstanceUID"):
        snapshot(ds)


def test_a_ten_megabyte_patient_name_cannot_be_understood() -> None:
    ds = a_ct()
    with disable_value_validation():
        ds["PatientName"] = DataElement(0x00100010, "PN", "A" * 10_000_000)

    with pytest.raises(CannotUnderstand, match="PatientName"):
        snapshot(ds, ImplicitVRLittleEndian)  # only 4-byte lengths hold 10 MB


def test_a_data_set_cut_short_anywhere_cannot_be_understood() -> None:
    data, syntax = encoded(a_ct())

    for cut in (len(data) - 1, len(data) // 2, 300, 40, 5):
        with pytest.raises(CannotUnderstand):
            READER.read(
                data[:cut], transfer_syntax_uid=syntax, media_sop_class_uid=CT_IMAGE_STORAGE
            )


def test_pixel_data_is_not_read_only_skipped() -> None:
    ds = a_ct()
    data, syntax = encoded(ds)
    # Corrupt every pixel byte: the snapshot does not change.
    pixels_at = data.index(struct.pack("<HH", 0x7FE0, 0x0010)) + 12
    scrambled = data[:pixels_at] + bytes(len(data) - pixels_at)

    read = READER.read(scrambled, transfer_syntax_uid=syntax, media_sop_class_uid="1.2")

    assert read.tags == snapshot(ds).tags | {"MediaStorageSOPClassUID": "1.2"}


VALID, VALID_SYNTAX = encoded(a_ct())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048), st.sampled_from([ImplicitVRLittleEndian, VALID_SYNTAX]))
def test_arbitrary_bytes_give_a_snapshot_or_cannot_understand(data: bytes, syntax: str) -> None:
    with contextlib.suppress(CannotUnderstand):
        READER.read(data, transfer_syntax_uid=syntax, media_sop_class_uid="1.2")


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=8))
def test_a_valid_data_set_with_flipped_bytes_gives_a_snapshot_or_cannot_understand(
    flips: list[tuple[int, int]],
) -> None:
    data = bytearray(VALID)
    for position, value in flips:
        data[position] = value
    with contextlib.suppress(CannotUnderstand):
        READER.read(bytes(data), transfer_syntax_uid=VALID_SYNTAX, media_sop_class_uid="1.2")
