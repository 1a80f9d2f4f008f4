"""One KB JSONL record -> the columns of `entities.parquet`, with the KB's own checks.

`pipeline.formats.inputs.write_entities` streams the KB through `KbRecords.add`, then calls
`KbRecords.warn` once, so a KB of millions of records gives one warning per kind, with
the count and the first example, not one per record:

- `kb_id` and `name` must be non-blank strings, and a record needs a name or an alias (E102); a `kb_id` with a tab or line break
  cannot be written to `system.tab` (E116);
- a record without `name` but with aliases takes its first alias as name (W107): KBs built
  from annotations or Wikidata often lack a label in the KB's language;
- an empty or blank alias is skipped (W104): it would meet every mention whose folded
  string is empty.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.core.errors import InputError, warn
from pipeline.core.io import check_record_fields

logger = logging.getLogger(__name__)

KB_FIELDS: dict[str, tuple[Any, bool]] = {
    "kb_id": (str, True),
    "name": (str, False),  # required unless the record has an alias (W107)
    "description": (str, False),
    "type": (str, False),
    "aliases": (list, False),
}


class KbRecords:
    """Checks KB records one by one and counts what is warned about (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.blank_aliases = 0
        self.blank_alias_example: str | None = None
        self.nameless = 0
        self.nameless_example: tuple[int, str] | None = None

    def add(self, line: int, record: dict[str, Any]) -> tuple[str, str, str | None, str | None, list[str]]:
        """(kb_id, name, description, type, alias texts) of one record; raises InputError E102/E103/E116."""
        path = self.path
        check_record_fields(path, line, record, KB_FIELDS)
        kb_id = record["kb_id"]
        for field in ("kb_id", "name"):
            if isinstance(record.get(field), str) and not record[field].strip():
                raise InputError(
                    "E103", path=path, line=line, field=field, expected="a non-blank string", got=record[field]
                )
        if any(ch in kb_id for ch in "\t\r\n"):
            raise InputError(
                "E116",
                path=path,
                line=line,
                what="KB id",
                value=kb_id,
                bad="a tab or line break",
                why="would split its line of system.tab",
                fix="remove it",
            )
        alias_texts = []
        for alias in record.get("aliases") or []:
            text = alias.get("text") if isinstance(alias, dict) else alias if isinstance(alias, str) else None
            if not isinstance(text, str):
                raise InputError(
                    "E103",
                    path=path,
                    line=line,
                    field="aliases",
                    expected="a list of {text, lang} objects or strings",
                    got=alias,
                )
            if not text.strip():
                self.blank_aliases += 1
                self.blank_alias_example = self.blank_alias_example or kb_id
                continue
            alias_texts.append(text)
        name = record.get("name")
        if name is None:
            if not alias_texts:
                raise InputError(
                    "E102",
                    path=path,
                    line=line,
                    field="name",
                    hint=" (or, without one, an alias: the first is then taken as the name)",
                )
            name = alias_texts[0]
            self.nameless += 1
            self.nameless_example = self.nameless_example or (line, kb_id)
        return kb_id, name, record.get("description"), record.get("type"), alias_texts

    def warn(self) -> None:
        """One warning per kind of record taken with a change (W104 blank aliases, W107 no name)."""
        if self.blank_aliases:
            warn(logger, "W104", path=self.path, count=self.blank_aliases, example=repr(self.blank_alias_example))
        if self.nameless_example is not None:
            warn(
                logger,
                "W107",
                path=self.path,
                count=self.nameless,
                line=self.nameless_example[0],
                example=self.nameless_example[1],
            )
