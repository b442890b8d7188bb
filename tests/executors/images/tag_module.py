"""A mercure-style Python module: appends text to one tag of every instance, with pydicom.

Settings (task.json > process > settings): `tag` (keyword), `append` (text), optional `result`
(merged into result.json, e.g. a `__mercure_notification`).
"""

import json
import os
from pathlib import Path

import pydicom

in_dir = Path(os.environ["MERCURE_IN_DIR"])
out_dir = Path(os.environ["MERCURE_OUT_DIR"])
task = json.loads((in_dir / "task.json").read_text())
settings = task["process"]["settings"]
modified = []
for path in sorted(in_dir.glob("*.dcm")):
    dataset = pydicom.dcmread(path)
    tags = json.loads(path.with_suffix(".tags").read_text())
    setattr(dataset, settings["tag"], str(dataset.get(settings["tag"], "")) + settings["append"])
    dataset.save_as(out_dir / path.name)
    modified.append({"file": path.name, "tags_sop": tags["SOPInstanceUID"]})
result = {
    "modified": modified,
    "settings": settings,
    "task_id": task["id"],
    **settings.get("result", {}),
}
(out_dir / "result.json").write_text(json.dumps(result))
print(f"modified {len(modified)} instances")
