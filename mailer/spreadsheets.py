"""CSV files staff export from a spreadsheet, read the one way every importer shares: a header line, then
records (quoted fields may span lines), each with the line it starts on."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import TextIO


class SheetError(ValueError):
    """The file cannot be read as CSV at all (empty, or its header line is not CSV)."""


class Sheet:
    """A CSV file with a header; `names` are its column names, trimmed and lower-case."""

    def __init__(self, stream: TextIO) -> None:
        self._reader = csv.reader(stream)
        try:
            header = next(self._reader)
        except StopIteration:
            raise SheetError("the file is empty") from None
        except csv.Error as exc:
            raise SheetError(f"line 1: not valid CSV ({exc})") from None
        self.names = [name.strip().lstrip("\ufeff").lower() for name in header]

    def records(self, rejected: list[tuple[int, str]]) -> Iterator[tuple[int, dict[str, str]]]:
        """(first line number, {column: value}) of each record that is not blank. A record with the wrong
        number of fields is rejected and skipped; unreadable CSV ends the reading at that line, rejected,
        with the records before it kept."""
        while True:
            line = self._reader.line_num + 1
            try:
                row = next(self._reader)
            except StopIteration:
                return
            except csv.Error as exc:
                rejected.append((line, f"not valid CSV ({exc}); the rest of the file was not read"))
                return
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(self.names):
                rejected.append((line, f"expected {len(self.names)} fields, found {len(row)}"))
                continue
            yield line, dict(zip(self.names, row, strict=True))
