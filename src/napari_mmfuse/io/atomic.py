"""One write path for every writer: build the result under a hidden temporary name, then rename.

Every file or folder napari-mmfuse writes is first written to a hidden sibling in the
destination's folder (``.NAME.tmp-<pid>-<random><suffix>``, the suffix kept so format
libraries pick the right codec), flushed to disk (fsync) and only then renamed onto its
final name with :func:`os.replace`. Folders (OME-Zarr) are built beside the destination
and swapped in: the old folder is renamed aside, the new one renamed into place, then the
old one deleted.

Consequences:

* The final name holds either what was there before or one writer's complete result,
  never a partial file. A crash (or SIGKILL) can leave a hidden temporary behind, never a
  half-written final file.
* An output may be one of the inputs: the inputs are read while the result is computed
  into the temporary, and the swap happens after.
* Concurrent writers to one name: the last complete rename wins, and the name then holds
  that writer's complete result (rename semantics); no two results are ever mixed. A
  folder's swap is two renames: between them the name is briefly absent, never partial.
* A symbolic link at the final name is replaced by the result, its target left alone.
* Files written together (a model's ``.pt`` and ``.json``) are each renamed whole, one
  after the other, not as one transaction.
* Any exception, :class:`KeyboardInterrupt` included, removes the temporary. SIGINT and
  SIGTERM become :class:`Interrupted` through :func:`install_signal_handlers`; a signal
  arriving during the final rename is held until the rename is done.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "Interrupted",
    "atomic_output",
    "install_signal_handlers",
    "remove_temporaries",
    "temporary_name",
    "write_bytes",
    "write_text",
]

_DOUBLE_SUFFIXES = (".nii.gz", ".ome.tiff", ".ome.tif", ".ome.zarr")


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when SIGINT or SIGTERM arrives (``signum`` says which)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


_critical_depth = 0
_pending: list[int] = []
_lock = threading.Lock()


def _on_signal(signum, frame) -> None:
    if _critical_depth:
        _pending.append(signum)
        return
    # cleanup (``finally`` blocks) must not be cut short by a second signal
    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """Turn SIGINT and SIGTERM into :class:`Interrupted`, so every temporary is removed.

    Call from the main thread (the ``mmfuse`` entry point does). After the first signal,
    further SIGINT/SIGTERM are ignored so the cleanup runs to its end.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_signal)


@contextmanager
def _critical() -> Iterator[None]:
    """Hold SIGINT/SIGTERM (as handled by :func:`install_signal_handlers`) until the block ends."""
    global _critical_depth
    with _lock:
        _critical_depth += 1
    try:
        yield
    finally:
        pending = None
        with _lock:
            _critical_depth -= 1
            if _critical_depth == 0 and _pending:
                pending = _pending[0]
                _pending.clear()
        if pending is not None and threading.current_thread() is threading.main_thread():
            _on_signal(pending, None)


def _suffix(name: str) -> str:
    lower = name.lower()
    for double in _DOUBLE_SUFFIXES:
        if lower.endswith(double):
            return name[-len(double) :]
    return os.path.splitext(name)[1]


def temporary_name(path, tag: str = "tmp") -> Path:
    """A unique hidden sibling of ``path``: ``.NAME.<tag>-<pid>-<random><suffix>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}{_suffix(path.name)}")


def remove_temporaries(folder) -> list[Path]:
    """Delete the temporaries (``.NAME.tmp-*``) that a killed writer left in ``folder``; return them.

    Only for a folder that one writer owns at a time (a cohort subject's output folder): a
    temporary there belongs to an attempt that died, never to a write in progress.
    """
    leftovers = sorted(Path(folder).glob(".*.tmp-*"))
    for path in leftovers:
        _remove(path)
    return leftovers


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(path: Path) -> None:
    """fsync a folder entry (best effort: not every file system allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for root, _dirs, files in os.walk(path):
            for name in files:
                _fsync_file(Path(root, name))
            _fsync_folder(Path(root))
    elif path.exists():
        _fsync_file(path)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:  # best effort: what cannot be removed stays, the result is already in place
        pass


def _commit(temporary: Path, path: Path, *, overwrite: bool) -> None:
    """Rename ``temporary`` onto ``path``; the old ``path`` (file or folder) is moved aside, then deleted."""
    if not overwrite:
        if temporary.is_dir():
            try:
                os.rename(temporary, path)  # fails when path is a file or a non-empty folder
            except OSError:
                raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it") from None
        else:
            try:
                os.link(temporary, path)  # fails, atomically, when path exists
            except FileExistsError:
                raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it") from None
            except OSError:  # no hard links here
                if os.path.lexists(path):
                    raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it") from None
                os.replace(temporary, path)
            else:
                temporary.unlink()
        return
    aside: list[Path] = []
    try:
        for _attempt in range(100):
            try:
                os.replace(temporary, path)
                break
            except OSError as error:
                # a folder onto a non-empty folder or a file, a file onto a folder:
                # move what is there aside and try again (a concurrent writer may put its own back)
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                    raise
                old = temporary_name(path, "old")
                try:
                    os.rename(path, old)
                    aside.append(old)
                except FileNotFoundError:
                    pass
        else:
            raise OSError(f"could not rename {temporary.name} onto {path}: another writer keeps replacing it")
    finally:
        for old in aside:
            _remove(old)


@contextmanager
def atomic_output(path, *, overwrite: bool = False, folder: bool = False, companions: bool = False) -> Iterator[Path]:
    """Write ``path`` through a hidden temporary sibling renamed into place on success.

    Parameters
    ----------
    path : str or Path
        Final file or folder.
    overwrite : bool
        Replace an existing ``path``. Without it, an existing ``path`` raises
        :class:`FileExistsError`, before the block runs and again at the rename (a path
        that appeared meanwhile is never replaced).
    folder : bool
        The output is a folder (OME-Zarr): the temporary path yielded does not exist yet;
        the writer creates it.
    companions : bool
        The format writes companion files beside the named one (MetaImage ``.mhd`` +
        ``.zraw``, detached NRRD): the path yielded has the final name inside a hidden
        temporary folder; every file written there is moved beside ``path``, the named
        file last.

    Yields
    ------
    Path
        Where the writer writes. Its suffix is ``path``'s (``.nii.gz`` stays ``.nii.gz``).

    Notes
    -----
    Two writers to one name: the last complete rename wins; the name then holds that
    writer's complete result, never a mix. Any exception (interruptions included) removes
    the temporary; a SIGKILL can leave it behind (hidden, named ``.NAME.tmp-...``).
    """
    path = Path(path)
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {path.parent} does not exist")
    if not folder and path.is_dir():
        raise IsADirectoryError(f"cannot write the file {path}: a folder of that name is there")
    if companions:
        holder = temporary_name(path)
        holder.mkdir()
        temporary = holder / path.name
    else:
        holder = temporary = temporary_name(path)
    try:
        yield temporary
        if not os.path.lexists(temporary):
            raise OSError(f"the writer of {path} produced nothing")
        _fsync_tree(holder)
        with _critical():
            if companions:
                for item in sorted(holder.iterdir(), key=lambda p: p.name == path.name):
                    _commit(item, path.with_name(item.name), overwrite=overwrite or item.name != path.name)
            else:
                _commit(holder, path, overwrite=overwrite)
            _fsync_folder(path.parent)
    finally:
        _remove(holder)


def write_bytes(path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`)."""
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as temporary:
        with open(temporary, "wb") as handle:
            handle.write(data)
    return path


def write_text(path, text: str, *, overwrite: bool = False, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_output`)."""
    return write_bytes(path, text.encode(encoding), overwrite=overwrite)
