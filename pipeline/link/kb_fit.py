"""How a trained linker fits the KB it links against, which need not be the KB it was trained on.

Nothing in the ranker is tied to its training KB except what triage learned (the alias
table: priors P(e|m) and training names of the fuzzy source, keyed by KB id) and the type
vocabulary; it reads vectors of names and descriptions. So a model links any KB:
- alias-table ids go through the optional id map (`read_kb_map`, `--kb-map`: old id ->
  new id, e.g. Wikipedia title -> Wikidata QID); ids the map does not name stay as they are;
- ids the KB then lacks are left out (one W710 saying how many, with examples and what it
  costs), and the KB's own names and aliases give candidates as in a run's triage;
- entity types the model never saw (or dropped as rare) are all-zero one-hots, as in a run;
  `KbFit` counts them for link's summary.
E705 is the one refusal: a map that carries no alias-table id into the KB was made for
another model or KB.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from pipeline.core.errors import InputError, warn
from pipeline.model.model_folder import ModelFolder

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
EXAMPLES = 3  # ids named in W710 and E705


def read_kb_map(path: Path, wanted: set[str] | None = None) -> pl.DataFrame:
    """The (from, to) pairs of a KB id map file, both String; only pairs whose `from` is in `wanted`
    (e.g. the alias table's ids) are kept, though every line is checked.

    TSV (any suffix but .jsonl/.json/.ndjson): `old<TAB>new` a line, an optional header
    `from<TAB>to`, blank lines skipped. JSONL: {"from": old, "to": new} a line. Raises E108
    (no file), E730 (a malformed line, or no pair at all), E731 (one old id mapped to two new
    ids among the kept pairs; a repeated identical pair is fine).
    """
    if not path.is_file():
        raise InputError("E108", path=path, hint=" (--kb-map)")
    pairs: dict[str, tuple[str, int]] = {}
    lines = 0
    with open(path, encoding="utf-8-sig", errors="strict") as handle:
        try:
            for number, raw in enumerate(handle, start=1):
                text = raw.rstrip("\r\n")
                if not text.strip():
                    continue
                pair = _map_pair(path, number, text, path.suffix.lower() in JSONL_SUFFIXES)
                if pair is None:  # the TSV header
                    continue
                lines += 1
                old, new = pair
                if wanted is not None and old not in wanted:
                    continue
                first = pairs.setdefault(old, (new, number))
                if first[0] != new:
                    raise InputError(
                        "E731", path=path, line=number, old=old, new=new, first_line=first[1], first=first[0]
                    )
        except UnicodeDecodeError as exc:
            raise InputError("E110", path=path, line="?", detail=str(exc)) from None
    if lines == 0:
        raise InputError("E730", path=path, line=1, detail="holds no pair of ids")
    return pl.DataFrame(
        {"from": list(pairs), "to": [new for new, _ in pairs.values()]}, schema={"from": pl.String, "to": pl.String}
    )


def _map_pair(path: Path, number: int, text: str, jsonl: bool) -> tuple[str, str] | None:
    """(old, new) of one non-blank map line; None for a TSV header line (`from<TAB>to`, first line only)."""
    if jsonl:
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError("E730", path=path, line=number, detail=f"not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not {"from", "to"} <= record.keys():
            raise InputError("E730", path=path, line=number, detail="needs the fields 'from' and 'to'")
        old, new = record["from"], record["to"]
    else:
        columns = text.split("\t")
        if len(columns) != 2:
            raise InputError(
                "E730",
                path=path,
                line=number,
                detail=f"has {len(columns)} tab-separated column(s), not 2 ({text[:60]!r})",
            )
        if number == 1 and [c.strip().lower() for c in columns] == ["from", "to"]:
            return None
        old, new = columns
    for name, value in (("from", old), ("to", new)):
        if not isinstance(value, str) or not value.strip() or value != value.strip():
            raise InputError(
                "E730",
                path=path,
                line=number,
                detail=f"its '{name}' id {value!r} is not a non-empty string without surrounding blanks",
            )
    return old, new


def map_ids(table: pl.DataFrame, column: str, kb_map: pl.DataFrame | None, count: str) -> pl.DataFrame:
    """`table` with `column` (a KB id) through `kb_map` (ids it does not name unchanged); rows that now
    share every other key column are one row, their `count` summed (two old ids may map to one)."""
    if kb_map is None:
        return table
    mapped = (
        table.join(kb_map.rename({"from": column}), on=column, how="left")
        .with_columns(pl.coalesce("to", column).alias(column))
        .drop("to")
    )
    keys = [name for name in table.columns if name != count]
    return mapped.group_by(keys).agg(pl.col(count).sum()).select(table.columns).sort(keys)


@dataclass(frozen=True)
class KbFit:
    """A model folder's KB-bound parts in the ids of the KB it links against, and what did not carry over.

    aliases: the alias table (mention, gold_kb_id, count) with ids mapped; rows of ids the KB
    lacks are kept, since priors P(e|m) are shares of every training mention of a string, as
    in the run (`LearnedSources.prepare` leaves those ids out of the candidates);
    popularity: (kb_id, count) mapped, or None.
    """

    aliases: pl.DataFrame
    popularity: pl.DataFrame | None
    alias_ids: int  # distinct KB ids of the model's alias table
    mapped_ids: int  # of them, renamed by the map
    missing_ids: int  # of them, not in the KB after the map
    missing_mentions: int  # training mentions behind the missing ids
    missing_examples: list[str] = field(default_factory=list)
    kb_types: int = 0  # distinct entity types of the KB
    unknown_types: int = 0  # of them, not in the model's entity type vocabulary
    unknown_type_entities: int = 0  # KB entities with one of those types

    def to_json(self) -> dict:
        """The counts, for link's manifest (no tables)."""
        return {
            "alias_ids": self.alias_ids,
            "alias_ids_mapped": self.mapped_ids,
            "alias_ids_missing": self.missing_ids,
            "alias_mentions_missing": self.missing_mentions,
            "alias_ids_missing_examples": self.missing_examples,
            "kb_types": self.kb_types,
            "unknown_types": self.unknown_types,
            "unknown_type_entities": self.unknown_type_entities,
        }


def fit_kb(
    folder: ModelFolder,
    entities: pl.LazyFrame,
    kb_map: pl.DataFrame | None = None,
    kb_map_path: Path | None = None,
    kb_path: Path | None = None,
) -> KbFit:
    """Fit `folder`'s alias table, popularity and type vocabulary to the KB whose `entities`
    (kb_id, type) are given; see the module doc. E705 when a map is given and no alias-table
    id is in the KB after it (`kb_map_path`, `kb_path` name the files in that message)."""
    aliases = map_ids(folder.aliases, "gold_kb_id", kb_map, "count")
    popularity = None if folder.popularity is None else map_ids(folder.popularity, "kb_id", kb_map, "count")
    known = entities.select("kb_id").collect()
    per_id = aliases.group_by("gold_kb_id").agg(pl.col("count").sum())
    missing = per_id.join(known.rename({"kb_id": "gold_kb_id"}), on="gold_kb_id", how="anti").sort("gold_kb_id")
    alias_ids = folder.aliases["gold_kb_id"].n_unique()
    mapped = (
        0
        if kb_map is None
        else folder.aliases.select("gold_kb_id")
        .unique()
        .join(kb_map.rename({"from": "gold_kb_id"}), on="gold_kb_id")
        .filter(pl.col("to") != pl.col("gold_kb_id"))
        .height
    )
    if kb_map is not None and alias_ids and missing.height == per_id.height:
        detail = (
            f"it maps {mapped} of them, to ids this KB does not hold"
            if mapped
            else "its 'from' column names none of them"
        )
        raise InputError(
            "E705",
            path=kb_path,
            count=alias_ids,
            model=folder.path,
            kb_map=kb_map_path,
            detail=detail,
            example=", ".join(map(repr, folder.aliases["gold_kb_id"].unique().sort().head(EXAMPLES))),
        )
    vocabulary = pl.Series("type", list(folder.meta["types"].get("entity") or []), dtype=pl.String)
    types = entities.select("type").drop_nulls().collect().group_by("type").len()
    unknown = types.filter(~pl.col("type").is_in(vocabulary.implode()))
    return KbFit(
        aliases,
        popularity,
        alias_ids,
        mapped,
        missing.height,
        int(missing["count"].sum()),
        missing["gold_kb_id"].head(EXAMPLES).to_list(),
        types.height,
        unknown.height,
        int(unknown["len"].sum()),
    )


def warn_missing(fit: KbFit, folder: ModelFolder, kb_path: Path) -> str | None:
    """W710 when the KB lacks alias-table ids: how many, examples, what it costs; returns the line (None: none lack)."""
    if not fit.missing_ids:
        return None
    uses_priors = bool(folder.meta["triage"].get("use_priors", True))
    cost = (
        "those training names give no prior P(e|m) and no training-name fuzzy match, so a mention only the "
        "training data named may miss its entity in triage (the KB's own names and aliases still give candidates)"
        if uses_priors
        else "the model reads no priors (triage.use_priors = false), so only their training-name "
        "fuzzy matches are lost (the KB's own names and aliases still give candidates)"
    )
    cost += (
        "; add those entities to the KB, give --kb-map OLD<TAB>NEW lines if it keys them differently, "
        "or train on this KB for its priors"
    )
    mapped = f" after mapping {fit.mapped_ids} with --kb-map" if fit.mapped_ids else ""
    return warn(
        logger,
        "W710",
        path=kb_path,
        count=fit.missing_ids,
        total=fit.alias_ids,
        model=folder.path,
        example=", ".join(map(repr, fit.missing_examples)),
        mapped=mapped,
        mentions=fit.missing_mentions,
        cost=cost,
    )


def fit_report(
    folder: ModelFolder, entities: pl.LazyFrame, kb_path: Path, kb_fingerprint: str, kb_map: Path | None = None
) -> tuple[KbFit, dict]:
    """`fit_kb` of the KB at `kb_path` (its `entities`: kb_id, type), reading the map file `kb_map`
    (E108, E730, E731, E705), and the report link's summary, manifest and `Linker.kb` give: the KB
    trained on, the KB linked against (`kb_identity` each), the map's path and `KbFit.to_json`."""
    wanted = set(folder.aliases["gold_kb_id"].to_list())
    if folder.popularity is not None:
        wanted |= set(folder.popularity["kb_id"].to_list())
    pairs = read_kb_map(kb_map, wanted) if kb_map is not None else None
    fit = fit_kb(folder, entities, pairs, kb_map, kb_path)
    count = entities.select(pl.len()).collect().item()
    return fit, {
        "trained_on": trained_kb(folder),
        "linked_against": kb_identity(kb_path, kb_fingerprint, count),
        "kb_map": str(kb_map) if kb_map is not None else None,
        **fit.to_json(),
    }


def kb_identity(path: Path, fingerprint: str | None, entities: int | None, name: str | None = None) -> dict:
    """How link's summary, manifest and model.json name a KB: file name, path, content fingerprint, entity count."""
    return {"name": name or Path(path).name, "path": str(path), "fingerprint": fingerprint, "entities": entities}


def trained_kb(folder: ModelFolder) -> dict:
    """`kb_identity` of the KB the model was trained on, from model.json (older folders have no name)."""
    kb = folder.meta["kb"]
    return kb_identity(kb.get("path", ""), kb.get("fingerprint"), kb.get("entities"), kb.get("name"))
