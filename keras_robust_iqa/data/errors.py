"""Errors and warnings raised by the dataset readers."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad dataset input: names the file, the row and (where it applies) the column.

    `row` is 1-based and counted as in the file: for CSV and text files it is the line
    number (the header is row 1, so the first data row is row 2), for MATLAB `.mat`
    arrays it is the 1-based index of the entry. `row` is `None` for problems with a
    whole file (missing file, missing column).
    """

    def __init__(self, file, row: int | None, reason: str, *, column: str | None = None):
        self.file = str(file)
        self.row = row
        self.reason = reason
        self.column = column
        where = self.file
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column '{column}'"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # keep the exception picklable (multiprocessing, pytest-xdist)
        return (_rebuild, (self.file, self.row, self.reason, self.column))


def _rebuild(file, row, reason, column):
    return DataError(file, row, reason, column=column)


class DataWarning(UserWarning):
    """Rows were skipped under `on_error="skip"` (the count and the first reasons)."""


def missing_file_error(path: Path, what: str = "metadata file") -> DataError:
    return DataError(path, None, f"{what} not found")
