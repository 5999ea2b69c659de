"""Writing and memory-mapping safetensors files: written atomically (a crash or a bad input never
leaves a half-written file or destroys the previous one), read without copying."""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .errors import InputError

_NP_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
              "U8": np.uint8, "BOOL": np.bool_}


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Create ``path`` by calling ``write(temporary_path)`` on a temporary file in the same folder and
    renaming it into place; on any error the old file (if any) is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file private (0600); keep the mode of the file it replaces, else the
        # ordinary one for a new file (0666 less the umask).
        if path.exists():
            mode = path.stat().st_mode & 0o777
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete temporary files that writes of ``path`` left behind when their process was killed
    (``.<name>.<pid>.<random>.tmp`` whose process no longer runs); a live writer's file is kept."""
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


def atomic_save(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Save ``tensors`` to ``path`` as safetensors, atomically (see :func:`atomic_write`)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """The safetensors JSON header and the byte offset where tensor data starts."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise InputError("file is shorter than a safetensors header")
        (size,) = struct.unpack("<Q", raw)
        if size > 100_000_000:
            raise InputError(f"header length {size} is implausible")
        header = json.loads(fh.read(size))
    return header, 8 + size


def mmap_tensors(path: str | os.PathLike, names=None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, memory-mapped (pages are read on first use; copy-on-write)."""
    header, start = read_header(path)
    size = os.path.getsize(path)
    out = {}
    spans = sorted((tuple(e["data_offsets"]), n) for n, e in header.items() if n != "__metadata__")
    for (prev, prev_name), (cur, name) in zip(spans, spans[1:], strict=False):
        if cur[0] < prev[1]:  # two tensors reading the same bytes: a forged or corrupt header
            raise InputError(f"tensors {prev_name!r} and {name!r} overlap in the file")
    for name, entry in header.items():
        if name == "__metadata__" or (names is not None and name not in names):
            continue
        begin, end = entry["data_offsets"]
        dtype = _NP_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise InputError(f"tensor {name!r} has dtype {entry['dtype']}, which steerlab does not memory-map")
        if not 0 <= begin <= end or start + end > size:
            raise InputError(f"tensor {name!r} runs past the end of the file (truncated?)")
        count = int(np.prod(entry["shape"])) if entry["shape"] else 1
        if count * np.dtype(dtype).itemsize != end - begin:
            raise InputError(f"tensor {name!r}: shape {entry['shape']} does not match its {end - begin} bytes")
        arr = np.memmap(path, dtype=dtype, mode="c", offset=start + begin, shape=(count,))
        out[name] = torch.from_numpy(arr).reshape(entry["shape"])
    return out
