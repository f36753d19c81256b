"""Errors a user can act on: each names the file, key or row at fault, and the CLI prints them without a traceback."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a recipe, data file or model, located by a dotted path (``stages.sft.lora.r``)."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class PipelineError(Exception):
    """An error caused by the user's input (recipe, data, model), reported as plain text by the CLI."""

    exit_code = 1


class RecipeError(PipelineError):
    """Every problem found in a recipe, reported together so that one edit fixes them all."""

    exit_code = 2

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


class DataError(PipelineError):
    """Bad data: names the file, the row (1-based) and the field."""

    exit_code = 2

    def __init__(self, path: str, message: str, row: int | None = None, field: str | None = None):
        where = path
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        self.path, self.row, self.field = path, row, field
        super().__init__(f"{where}: {message}")


class UsageError(PipelineError):
    """A command-line option that cannot work (named in the message)."""

    exit_code = 2


class ModelError(PipelineError):
    """A model that cannot be found or loaded."""

    exit_code = 2


class TrainingDiverged(PipelineError):
    """A loss, gradient or weight became NaN or inf: the stage fails at that step and nothing is committed."""


class MachineError(PipelineError):
    """Something on this machine, outside the recipe, stops a run before it starts (the message names the file and
    what to do)."""

    exit_code = 2


class StorageError(PipelineError):
    """Writing a file failed: no space left, no permission, a read-only or failing disk (the message says which)."""

    exit_code = 2


def storage_error(exc: BaseException, stage: str, folder) -> StorageError | None:
    """A StorageError explaining ``exc`` when it is a failed write (None when it is something else)."""
    import errno
    import shutil

    def free_bytes() -> int | None:
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            return None

    def free() -> str:
        left = free_bytes()
        return f"{left / 2**20:,.1f} MiB free" if left is not None else "free space unknown"

    left = free_bytes()
    nearly_full = left is not None and left < 64 * 2**20

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) or \
            isinstance(exc, (OSError, RuntimeError)) and nearly_full:
        return StorageError(f"stage '{stage}': no space left on the device of {folder} ({free()}) while writing "
                            f"{getattr(exc, 'filename', None) or 'a file'}; free some space and run again (it resumes "
                            "from the last complete checkpoint)")
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
        return StorageError(f"stage '{stage}': permission denied writing {exc.filename or folder}")
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return StorageError(f"stage '{stage}': {exc.filename or folder} is on a read-only file system")
    if isinstance(exc, OSError) and exc.errno == errno.EIO:
        return StorageError(f"stage '{stage}': the disk failed while reading or writing {exc.filename or folder}")
    text = str(exc)
    if isinstance(exc, RuntimeError) and ("iostream error" in text or "PytorchStreamWriter" in text
                                          or "file write failed" in text or "inline_container" in text):
        return StorageError(f"stage '{stage}': writing a file under {folder} failed ({free()}; a full disk is the "
                            f"usual cause): {text.splitlines()[0][:200]}")
    return None
