"""Test instances: written by pydicom, then rewritten by DCMTK so they are files a DCMTK sender
would hold (its file meta, its encoding), and compressed with DCMTK's own codecs."""

import subprocess
import uuid
from array import array
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def ct_instance(
    *, study_uid: str, series_uid: str, number: int, rows: int = 64, **attributes: object
) -> Dataset:
    """A small CT image with the attributes routers look at."""
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
    ds.PixelData = array("H", [(i * (number + 1)) % 4096 for i in range(rows * rows)]).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def save_as_dcmtk_file(ds: Dataset, path: Path) -> Path:
    """Write `ds`, then let DCMTK rewrite it: the file a DCMTK sender would hold."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_suffix(".draft")
    ds.save_as(draft, enforce_file_format=True)
    subprocess.run(["dcmconv", "+te", str(draft), str(path)], check=True)
    draft.unlink()
    return path


def write_study(folder: Path, *, series: int, instances: int, rows: int = 64) -> list[Path]:
    """One study of `series` x `instances` CT images as DCMTK files, in send order."""
    study_uid = new_uid()
    files = []
    for s in range(series):
        series_uid = new_uid()
        for i in range(instances):
            ds = ct_instance(study_uid=study_uid, series_uid=series_uid, number=i + 1, rows=rows)
            files.append(save_as_dcmtk_file(ds, folder / f"s{s}" / f"i{i:03d}.dcm"))
    return files


def compress(source: Path, target: Path, *, tool: str, options: tuple[str, ...] = ()) -> Path:
    """`source` compressed by a DCMTK codec tool (`dcmcjpeg`, `dcmcjpls`, `dcmcrle`)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([tool, *options, str(source), str(target)], check=True)
    return target
