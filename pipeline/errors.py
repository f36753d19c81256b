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


class ModelError(PipelineError):
    """A model that cannot be found or loaded."""

    exit_code = 2
