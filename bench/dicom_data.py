"""Synthetic CT instances, the data set of the benchmarks and of the intake tests."""

import uuid
from array import array

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def ct_instance(
    *,
    study_uid: str,
    series_uid: str,
    number: int,
    rows: int = 64,
    pixels: bytes | None = None,
    **attributes: object,
) -> Dataset:
    """A CT image (`rows` x `rows`, 16 bits) with the attributes routers look at; `pixels`
    defaults to a gradient that differs per `number`."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = new_uid()
    ds.StudyDate = ds.SeriesDate = "20240314"
    ds.SeriesTime = "093000"
    ds.AccessionNumber = "ACC42"
    ds.Modality = "CT"
    ds.Manufacturer = "BenchCo"
    ds.InstitutionName = "Hôpital Général"
    ds.StudyDescription = "CT CHEST"
    ds.SeriesDescription = f"AXIAL {series_uid[-4:]}"
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = "P001"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = "1.0"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    procedure = Dataset()
    procedure.CodeValue = "CTCHEST"
    procedure.CodingSchemeDesignator = "LOCAL"
    procedure.CodeMeaning = "CT of the chest"
    ds.ProcedureCodeSequence = [procedure]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if pixels is None:
        pixels = array("H", [(i * (number + 1)) % 4096 for i in range(rows * rows)]).tobytes()
    ds.PixelData = pixels
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds
