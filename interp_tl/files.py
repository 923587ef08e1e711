"""Writing files atomically: a temporary file in the target folder, fsync, then a rename.

An error (or Ctrl-C) part-way never leaves a half-written file under the final name, and a new
file gets the permissions a normally created file would (the umask applied), not mkstemp's 0600.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from interp_tl.errors import OutputPathError


def _file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask (mkstemp's is 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Raises:
        OutputPathError: the folder cannot be written, or ``path`` is a directory.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"cannot write {str(path)!r}: a directory of that name is in the way")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputPathError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputPathError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
