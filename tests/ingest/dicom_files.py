"""Test instances: written by pydicom, then rewritten by DCMTK so they are files a DCMTK sender
would hold (its file meta, its encoding), and compressed with DCMTK's own codecs."""

import subprocess
from pathlib import Path

from pydicom.dataset import Dataset

from bench.dicom_data import ct_instance, new_uid


def save_as_dcmtk_file(ds: Dataset, path: Path) -> Path:
    """Write `ds`, then let DCMTK rewrite it: the file a DCMTK sender would hold."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_suffix(".draft")
    ds.save_as(draft, enforce_file_format=True)
    subprocess.run(["dcmconv", "+te", str(draft), str(path)], check=True)
    draft.unlink()
    return path


def write_study(
    folder: Path, *, series: int, instances: int, rows: int = 64, modality: str = "CT"
) -> list[Path]:
    """One study of `series` x `instances` images (CT unless `modality` says otherwise) as
    DCMTK files, in send order."""
    study_uid = new_uid()
    files = []
    for s in range(series):
        series_uid = new_uid()
        for i in range(instances):
            ds = ct_instance(
                study_uid=study_uid,
                series_uid=series_uid,
                number=i + 1,
                rows=rows,
                Modality=modality,
            )
            files.append(save_as_dcmtk_file(ds, folder / f"s{s}" / f"i{i:03d}.dcm"))
    return files


def compress(source: Path, target: Path, *, tool: str, options: tuple[str, ...] = ()) -> Path:
    """`source` compressed by a DCMTK codec tool (`dcmcjpeg`, `dcmcjpls`, `dcmcrle`)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([tool, *options, str(source), str(target)], check=True)
    return target
