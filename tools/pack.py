"""One archive of a tool's output folder: what a GPU machine's $OUT sends back is at most 8 files,
no more than 2 folders down, so a folder of logs and run folders comes back as one .tar.gz.

    from pack import pack  # the tools' folder is on sys.path when a tool runs as a script
    pack(out, Path(os.environ["OUT"]) / "gpu-train.tar.gz")
"""

from __future__ import annotations

import tarfile
from pathlib import Path

# the previous checkpoint is only the run's safety copy while the next one is written
LEFT_OUT = ("checkpoint.prev.pt",)


def pack(folder: Path, archive: Path) -> Path:
    """Write ``folder`` (as one top folder of its own name) into the gzip'd tar ``archive``, without
    `LEFT_OUT`; an archive inside the folder is not packed into itself."""
    folder, archive = Path(folder), Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        name = Path(info.name).name
        return None if name in LEFT_OUT or name == archive.name else info

    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name, filter=keep)
    return archive
