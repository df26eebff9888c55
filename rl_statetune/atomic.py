"""Atomic file writes: a crash mid-write leaves the previous file intact, never a truncated one."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

LOW_SPACE_BYTES = 1 << 20


class WriteError(OSError):
    """A file could not be written (disk full, permissions); the message names the file."""


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    The file gets the usual permissions (0666 less the umask). A failed write (a full disk surfaces from
    ``torch.save`` as an opaque ``RuntimeError``) raises :class:`WriteError` naming the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())   # some writers (safetensors) create 0600 files
        tmp.replace(path)
    except (OSError, RuntimeError) as e:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC or _low_space(path.parent):
            raise WriteError(errno.ENOSPC, f"cannot write {path}: no space left on the device; free some space "
                             "(the previous file, if any, is intact)") from None
        if isinstance(e, PermissionError):
            raise WriteError(errno.EACCES, f"cannot write {path}: permission denied") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _low_space(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < LOW_SPACE_BYTES
    except OSError:
        return False


def atomic_torch_save(obj, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
