"""Files that are never half-written, and checkpoints read back safely. Every writer of postclip goes through here.

    atomic_write(path, lambda f: f.write(b"..."))     # bytes (text=True: a str file object)
    atomic_torch_save(obj, path)                       # a dict also gets a "checksum" of its tensors
    load_checkpoint_file(path)                         # torch.load(weights_only=True), checksum verified

A write goes to a temp file in the same folder (`.NAME.tmp-PID-XXXX`), is fsynced, and is renamed over `path`:
a reader sees the old file or the new one, never half of one. On any failure the temp file is removed. A process
killed mid-write (kill -9) cannot clean up: the next run in that folder calls remove_stale_temp_files first.
"""
import errno
import os
import shutil
import tempfile
import zlib

TEMP_MARK = ".tmp-"


class DiskFullError(OSError):
    """The disk filled up during a write; the message says which file and how much space is left."""


def _disk_full_message(path):
    folder = os.path.dirname(os.path.abspath(path))
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    return (f"cannot write {path}: the disk is full ({free} on the file system of {folder}); free some space "
            f"or write elsewhere, then run the same command again (nothing already written was lost)")


def _looks_like_disk_full(error):
    # torch.save's zip writer reports ENOSPC as a RuntimeError "... unexpected pos N vs M" / "file write failed"
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(error, RuntimeError) and any(s in str(error) for s in ("unexpected pos", "write failed"))


def atomic_write(path, write, text=False):
    """Call write(file) on a temp file next to `path`, fsync it, then rename it to `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}{TEMP_MARK}{os.getpid()}-")
    try:
        with (os.fdopen(handle, "w", encoding="utf-8", newline="") if text else os.fdopen(handle, "wb")) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())  # on disk before the rename makes it visible
        os.chmod(temp, 0o644)  # mkstemp makes it private; results are shared between users of a cluster
        os.replace(temp, path)
    except BaseException as error:
        if os.path.exists(temp):
            os.remove(temp)
        if _looks_like_disk_full(error):
            raise DiskFullError(errno.ENOSPC, _disk_full_message(path)) from None
        raise


def atomic_write_text(path, content):
    atomic_write(path, lambda file: file.write(content), text=True)


def atomic_torch_save(obj, path):
    import torch  # here, not at the top: a process that writes tables only (tools/tables.py) needs no torch

    if isinstance(obj, dict):
        obj = {**obj, "checksum": tensor_checksum(obj)}
    atomic_write(path, lambda file: torch.save(obj, file))


def tensor_checksum(obj):
    """CRC32 of the bytes of every tensor in a nested dict/list, in a fixed order. torch.load does not check the
    data it reads, so a flipped bit in a weight would load and train silently; load_checkpoint_file checks this."""
    import torch

    crc = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item[k] for k in sorted(item, key=str, reverse=True) if k != "checksum")
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
        elif torch.is_tensor(item):
            data = item.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            crc = zlib.crc32(data, zlib.crc32(str(tuple(item.shape)).encode(), crc))
    return crc


def remove_stale_temp_files(folder):
    """Delete the temp files that killed writers left in `folder` (call it only while owning the folder).
    -> the names removed."""
    if not os.path.isdir(folder):
        return []
    stale = [name for name in os.listdir(folder) if TEMP_MARK in name and name.startswith(".")]
    for name in stale:
        os.remove(os.path.join(folder, name))
    return stale


def load_checkpoint_file(path, what="checkpoint"):
    """torch.load(path, weights_only=True) on the CPU, or a one-line error that names the file and what to do."""
    import torch

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} not found")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes): a write was cut short. Delete it and re-run the step "
                         f"that writes it")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupted or foreign: say which file, never "use weights_only=False"
        reason = "it holds Python objects other than tensors and plain data" if "Unsupported global" in str(e) \
            else f"it is truncated, corrupted or not a torch file ({type(e).__name__})"
        raise ValueError(f"cannot read {what} {path}: {reason}. Delete it and re-run the step that writes it, or "
                         f"pass the right file") from None
    if isinstance(record, dict) and "checksum" in record and record["checksum"] != tensor_checksum(record):
        raise ValueError(f"{what} {path} is corrupted: its tensors do not match the checksum written with them (a "
                         f"damaged disk or copy). Copy it again, or delete it and re-run the step that writes it")
    return record


def recorded_path(path, checkpoint):
    """A relative path that a checkpoint records (its CLIP, its embedding cache), found from the checkpoint's own
    folder rather than the current directory: a run records paths relative to the folder it was started in (the
    repository's root, for `make`), which holds its run directory, so the nearest folder above the checkpoint that
    holds `path` is that one. Absolute paths, tags ("openai") and paths found nowhere are returned unchanged."""
    if not path or os.path.isabs(path):
        return path
    folder = os.path.dirname(os.path.abspath(checkpoint))
    while True:
        if os.path.exists(os.path.join(folder, path)):
            return os.path.join(folder, path)
        if os.path.dirname(folder) == folder:
            return path
        folder = os.path.dirname(folder)
