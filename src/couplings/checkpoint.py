"""Atomic checkpoints: a run killed at any instant resumes from its last completed unit of work.

A checkpoint is written to a temporary file in the destination's directory, flushed and
``fsync``-ed, then moved over the destination with :func:`os.replace`, which is atomic on POSIX
and Windows: a reader sees either the old checkpoint or the new one, never half of one. Loading
uses ``torch.load(path, weights_only=True)``, so a checkpoint holds only plain data (tensors,
numbers, strings, ``None``, and lists, tuples and dicts of those); :func:`save_checkpoint` checks
that before writing, so a state that could not be loaded back is refused at save time, not at
resume time.

:class:`Checkpoint` is what an experiment run uses: a store of completed units of work, keyed by
a string, tagged with a fingerprint of the run's settings, so that a checkpoint of a different
configuration is never resumed.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.pt"
    >>> save_checkpoint({"step": 3, "losses": [0.5, 0.25]}, path)
    >>> load_checkpoint(path)
    {'step': 3, 'losses': [0.5, 0.25]}
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "atomic_write",
    "atomic_write_text",
    "check_plain",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT_VERSION = 1
_UMASK = os.umask(0o022)  # read the process umask (the only portable way) and put it back
os.umask(_UMASK)
_PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes)


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be read, or a state cannot be stored in one."""


def _fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (best effort; not possible on every OS)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Write a file atomically: ``write(f)`` fills a temporary file that then replaces ``path``.

    The temporary file lives in the same directory (so the final rename cannot cross file
    systems), is flushed and ``fsync``-ed before :func:`os.replace`, and is removed if ``write``
    or the rename fails, leaving any previous file at ``path`` untouched.

    Args:
        path: destination file; its directory must exist.
        write: callable receiving the open binary file object.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp creates the file private (0o600); give it the mode open() would
            os.chmod(tmp_name, 0o666 & ~_UMASK)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write`."""
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def check_plain(obj: Any, where: str = "state") -> None:
    """Raise :class:`TypeError` unless ``obj`` loads under ``torch.load(weights_only=True)``.

    Plain means tensors, ``None``, bools, numbers, strings, bytes, and lists, tuples and dicts
    (with plain keys) of those. NumPy scalars and arrays, dataclasses and other objects are not
    plain: convert them first (``float(x)``, ``torch.from_numpy(arr)``, ``dataclasses.asdict``).
    """
    if type(obj) in _PLAIN_SCALARS or isinstance(obj, torch.Tensor):  # exact: np.float64 is
        return  # a float subclass, but it does not load with weights_only
    if isinstance(obj, list | tuple):
        for i, item in enumerate(obj):
            check_plain(item, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for key, item in obj.items():
            if type(key) not in _PLAIN_SCALARS:
                raise TypeError(
                    f"{where} has a key of type {type(key).__name__}; checkpoint dict keys must "
                    "be strings or numbers."
                )
            check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; a checkpoint holds only "
        "tensors, numbers, strings, None, and lists/tuples/dicts of those (so that it loads with "
        "torch.load(weights_only=True)). Convert it, e.g. float(x) or torch.from_numpy(arr)."
    )


def save_checkpoint(state: Any, path: str | os.PathLike) -> None:
    """Save plain ``state`` to ``path`` atomically with :func:`torch.save`.

    Args:
        state: plain data (see :func:`check_plain`).
        path: destination file; its directory is created if needed.

    Raises:
        TypeError: if ``state`` is not plain; nothing is written then.
    """
    check_plain(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike) -> Any | None:
    """Load a checkpoint saved by :func:`save_checkpoint`; ``None`` if there is none.

    Raises:
        CheckpointError: if the file exists but cannot be read with ``weights_only=True``.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # a foreign, truncated or non-plain file
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}. Delete it, or rerun "
            "with --fresh to ignore it."
        ) from exc


class Checkpoint:
    """The completed units of work of one run, kept on disk in one atomically replaced file.

    A unit is identified by a string key and its result is plain data. :meth:`record` stores a
    result and rewrites the file (at most once per ``save_every_s`` seconds; every time with the
    default 0). The file is tagged with ``fingerprint`` (e.g. the JSON of the experiment name,
    config and seed): a checkpoint with another fingerprint belongs to another run and is
    ignored, as is any checkpoint when ``fresh`` is set. :meth:`finalize` deletes the file once
    the run's outputs are written.

    Args:
        path: checkpoint file, e.g. ``results/NAME/checkpoint.pt``.
        fingerprint: identifies the run's settings.
        fresh: ignore (and eventually overwrite) an existing checkpoint.
        save_every_s: minimum number of seconds between two writes.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.pt"
        >>> ckpt = Checkpoint(path, fingerprint="demo")
        >>> ckpt.record("unit-0", {"loss": 0.5})
        >>> Checkpoint(path, fingerprint="demo").completed
        {'unit-0': {'loss': 0.5}}
        >>> Checkpoint(path, fingerprint="other config").completed
        {}
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fingerprint: str,
        fresh: bool = False,
        save_every_s: float = 0.0,
    ):
        self.path = Path(path)
        self.fingerprint = str(fingerprint)
        self.save_every_s = float(save_every_s)
        self._units: dict[str, Any] = {} if fresh else self._read_units()
        self.resumed_units = len(self._units)
        self._last_save = -float("inf")
        self._dirty = False

    def _read_units(self) -> dict[str, Any]:
        self._remove_stale_temporaries()
        state = load_checkpoint(self.path)
        if state is None:
            return {}
        if not (
            isinstance(state, dict)
            and state.get("format") == FORMAT_VERSION
            and isinstance(state.get("units"), dict)
        ):
            raise CheckpointError(
                f"{self.path} is not a couplings run checkpoint (format {FORMAT_VERSION}). "
                "Delete it, or rerun with --fresh to ignore it."
            )
        if state.get("fingerprint") != self.fingerprint:
            print(
                f"couplings: ignoring {self.path}: it was written by a run with other settings.",
                file=sys.stderr,
            )
            return {}
        return dict(state["units"])

    def _remove_stale_temporaries(self) -> None:
        """Delete temporary files left by a process killed in the middle of a write."""
        if self.path.parent.is_dir():
            for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
                with contextlib.suppress(OSError):
                    stale.unlink()

    @property
    def completed(self) -> dict[str, Any]:
        """Results of the completed units, by key (a copy)."""
        return dict(self._units)

    def __contains__(self, key: str) -> bool:
        return key in self._units

    def get(self, key: str) -> Any:
        """The stored result of unit ``key``."""
        return self._units[key]

    def record(self, key: str, result: Any) -> None:
        """Store the result of unit ``key`` and save (subject to ``save_every_s``).

        Raises:
            TypeError: if ``result`` is not plain data (see :func:`check_plain`).
        """
        check_plain(result, f"result of unit {key!r}")
        self._units[str(key)] = result
        self._dirty = True
        if time.monotonic() - self._last_save >= self.save_every_s:
            self.flush()

    def flush(self) -> None:
        """Write the checkpoint now if anything was recorded since the last write."""
        if not self._dirty:
            return
        state = {"format": FORMAT_VERSION, "fingerprint": self.fingerprint, "units": self._units}
        save_checkpoint(state, self.path)
        self._last_save = time.monotonic()
        self._dirty = False

    def finalize(self) -> None:
        """Delete the checkpoint file: the run is complete and its outputs are written."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._dirty = False
