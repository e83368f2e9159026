"""Bad input stops the run before any work, naming where it is."""
from __future__ import annotations


class DataError(ValueError):
    """An input problem located at file, line (or CSV row) and field."""

    def __init__(self, path: str, line: int | None, field: str | None, problem: str):
        self.path, self.line, self.field, self.problem = str(path), line, field, problem
        where = self.path if line is None else f"{self.path}:{line}"
        what = f" field '{field}'" if field else ""
        super().__init__(f"{where}:{what} {problem}")
