"""The run folder of an experiment: no clobbering, one run at a time, complete checkpoints, an atomic `final/`."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..artifacts import FINAL_FOLDER_NAME, WEIGHTS_FILE, WEIGHTS_INDEX_FILE


logger = logging.getLogger(__name__)


LOCK_FILE = ".balm_tsf_run.lock"
"""The lock a training run holds in its output folder (released when the run ends or its process dies)."""

_CHECKPOINT_PATTERN = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_TRAINER_STATE_FILE = "trainer_state.json"  # written last by `Trainer._save_checkpoint`
_PARTIAL_FINAL_PREFIX = f".{FINAL_FOLDER_NAME}-"


def is_main_process() -> bool:
    """Whether this is the global main process of a (possibly distributed) launch (`RANK` 0 or no `RANK`)."""
    return int(os.environ.get("RANK", "0")) == 0


def _checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    if not output_dir.is_dir():
        return []
    found = [
        (int(match.group(1)), path) for path in output_dir.iterdir() if (match := _CHECKPOINT_PATTERN.match(path.name))
    ]
    return sorted((step, path) for step, path in found if path.is_dir())


def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    r"""
    Whether a `checkpoint-*` folder was saved to the end: it has the model weights and a readable
    `trainer_state.json`, which `Trainer` writes after the weights, the optimizer, the scheduler and the RNG states.
    """
    folder = Path(folder)
    if not ((folder / WEIGHTS_FILE).is_file() or (folder / WEIGHTS_INDEX_FILE).is_file()):
        return False
    try:
        state = json.loads((folder / _TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest `checkpoint-*` folder of `output_dir` that was saved completely (see [`is_complete_checkpoint`])."""
    for _, path in reversed(_checkpoints(Path(output_dir))):
        if is_complete_checkpoint(path):
            return str(path)
        logger.warning(f"skipping the incomplete checkpoint {path} (interrupted while saving)")
    return None


def resolve_resume_checkpoint(output_dir: str | os.PathLike, resume: str | bool | None) -> str | None:
    r"""
    The checkpoint to resume from: `True` the newest complete `checkpoint-*` folder in `output_dir` (incomplete ones,
    left by a kill during a save, are skipped with a warning), a path that folder (which must be complete),
    `None`/`False` none.

    Raises:
        `ValueError`: when there is no complete checkpoint to resume from, naming the folder.
    """
    if resume is None or resume is False:
        return None
    if resume is True:
        latest = last_complete_checkpoint(output_dir)
        if latest is None:
            raise ValueError(f"--resume: no checkpoint (complete checkpoint-* folder) in {output_dir} to resume from")
        logger.info(f"resuming from {latest}, the newest complete checkpoint")
        return latest
    if not Path(resume).is_dir():
        raise ValueError(f"--resume: checkpoint folder {resume} does not exist")
    if not is_complete_checkpoint(resume):
        raise ValueError(
            f"--resume: {resume} is an incomplete checkpoint (no weights or no readable {_TRAINER_STATE_FILE}); "
            "resume from an earlier one"
        )
    return str(resume)


def run_folder_contents(output_dir: str | os.PathLike) -> list[str]:
    """What `output_dir` holds, but the lock file: the names a new run would overwrite or mix with."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    return sorted(path.name for path in output_dir.iterdir() if path.name != LOCK_FILE)


def check_output_dir(output_dir: str | os.PathLike, resume: str | bool | None, overwrite: bool) -> None:
    r"""
    Refuse to train into a folder that holds anything (a finished or interrupted run) unless resuming or `overwrite`.

    Every process of a launch decides the same from the same folder (the lock file is not counted), before the main
    process changes anything.

    Raises:
        `ValueError`: naming the folder and what it holds.
    """
    if resume or overwrite:
        return
    contents = run_folder_contents(output_dir)
    if contents:
        shown = ", ".join(contents[:5]) + (", ..." if len(contents) > 5 else "")
        raise ValueError(
            f"output folder {output_dir} is not empty ({shown}): resume the run in it with --resume, replace it with "
            "--overwrite (training.overwrite=true), or choose another --output-dir"
        )


def clear_run(output_dir: str | os.PathLike) -> None:
    """Delete what a run wrote into `output_dir` (checkpoints, `final/`, log history); other files stay."""
    output_dir = Path(output_dir)
    for _, path in _checkpoints(output_dir):
        shutil.rmtree(path)
    for name in (FINAL_FOLDER_NAME, "log_history.json"):
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    if output_dir.is_dir():
        for path in output_dir.glob(f"{_PARTIAL_FINAL_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)
    logger.info(f"--overwrite: removed the previous run's checkpoints and final folder from {output_dir}")


@contextmanager
def run_lock(output_dir: str | os.PathLike) -> Iterator[None]:
    r"""
    Hold the run lock of `output_dir` (main process only; the others yield at once), so that a second run into the
    same folder fails at once instead of clobbering this one's checkpoints. The operating system releases the lock
    when the process ends, even when it is killed.

    Raises:
        `ValueError`: when another run holds the lock.
    """
    if not is_main_process():
        yield
        return
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(output_dir / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ValueError(
            f"another training run is using {output_dir} (it holds {output_dir / LOCK_FILE}); wait for it to end or "
            "choose another --output-dir"
        ) from None
    try:
        yield
    finally:
        lock.release()


def write_folder_atomically(folder: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    r"""
    Call `write(temporary)` on a new temporary folder next to `folder`, then put it in place of `folder` by renames,
    so that `folder` is always either the previous complete folder or the new complete one.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = folder.parent / f"{_PARTIAL_FINAL_PREFIX}{os.getpid()}"
    previous = folder.parent / f"{_PARTIAL_FINAL_PREFIX}{os.getpid()}-previous"
    for path in (temporary, previous):
        if path.exists():
            shutil.rmtree(path)
    try:
        write(temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if folder.exists():
        folder.rename(previous)
    temporary.rename(folder)
    if previous.exists():
        shutil.rmtree(previous)
    return folder


__all__ = [
    "LOCK_FILE",
    "check_output_dir",
    "clear_run",
    "is_complete_checkpoint",
    "is_main_process",
    "last_complete_checkpoint",
    "resolve_resume_checkpoint",
    "run_folder_contents",
    "run_lock",
    "write_folder_atomically",
]
