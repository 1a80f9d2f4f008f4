"""Transfer to another KB: a linker trained on one KB links another (issue 23, docs/any-kb.md).

    python bench/kb_transfer.py [--studies demo-on-meantime,meantime-on-demo,disjoint]
                                [--disjoint-corpus meantime|demo] [--variants own,any] [--folds 0,1]
                                [--training-kb half|full]
                                [--epochs N] [--encoder NAME] [--work DIR]

Needs ../shared/data/meantime for the MEANTIME studies. Every figure is KBP2010 micro-average
(share of mentions whose link is the gold one, every NIL equal) on the same mentions:
- demo-on-meantime: the demo's model (configs/demo.toml) links MEANTIME's named test mentions
  against MEANTIME's KB; beside it MEANTIME's own model (configs/meantime.toml) on them;
- meantime-on-demo: MEANTIME's model on the demo's test split against the demo's KB, beside
  the demo's own model;
- disjoint: one corpus's KB entities cut in two halves by a hash of their id; a model trained
  on the train/dev mentions of one half (and NIL mentions) links the whole test split against
  the KB with every id renamed (no --kb-map: nothing of the alias table carries over), scored
  apart for test mentions of seen entities, unseen ones and all; beside the model trained on
  every mention, linking its own KB. Fold 0 sees the even-hash half, fold 1 the other; with both,
  a last table pools them, so every entity counts once seen and once unseen (one cut alone can
  put a corpus's most mentioned entity on one side: MEANTIME's Apple Inc., docs/any-kb.md).
The alias baseline is each mention's top triage candidate (priors of the in-KB model's
training mentions, KB names, fuzzy and dense names), NIL when it has none. Variants: `own`
trains as the config says; `any` adds triage.use_priors = false (a model for any KB);
`any-product` and `any-similarity` also train.pair_input = "product" or "similarity" (no ranker
weight scores an entity alone).
Runs and links go to --work (default artifacts/bench-kb-transfer); a finished run is reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
MEANTIME = ROOT.parent / "shared" / "data" / "meantime"
DEMO = ROOT / "pipeline" / "demo_data"
CONFIGS = {"demo": ROOT / "configs" / "demo.toml", "meantime": ROOT / "configs" / "meantime.toml"}
VARIANTS = {
    "own": (),
    "any": ("triage.use_priors=false",),
    "any-product": ("triage.use_priors=false", "train.pair_input=product"),
    "any-similarity": ("triage.use_priors=false", "train.pair_input=similarity"),
}
MENTION_FIELDS = (
    "id",
    "doc_id",
    "lang",
    "mention",
    "text",
    "start",
    "end",
    "doc_start",
    "doc_end",
    "gold_kb_id",
    "entity_type",
    "split",
    "named",
)


def xel(*args: object) -> str:
    """Run `xel-cli` (this checkout's cli.py) at low priority; its output, or exit with it on failure."""
    command = ["nice", "-n", "10", sys.executable, str(ROOT / "cli.py"), *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def corpus_mentions(corpus: str) -> pl.DataFrame:
    """A corpus's mentions with gold (MEANTIME: named mentions, repeated ids made distinct as
    inputs.rename_duplicate_ids does), the `MENTION_FIELDS` columns."""
    path = (MEANTIME if corpus == "meantime" else DEMO) / "mentions.jsonl"
    table = pl.read_ndjson(path, infer_schema_length=None)
    if "named" in table.columns:
        table = table.filter(pl.col("named").fill_null(True))
    repeated = pl.col("id").is_duplicated()
    table = table.with_columns(
        pl.when(repeated).then(pl.format("{}#{}-{}", "id", "start", "end")).otherwise("id").alias("id")
    )
    return table.select([name for name in MENTION_FIELDS if name in table.columns])


def kb_path(corpus: str) -> Path:
    return (MEANTIME if corpus == "meantime" else DEMO) / "kb.jsonl"


def train(name: str, corpus: str, work: Path, args: argparse.Namespace, *overrides: str) -> Path:
    """`xel-cli run` of `corpus`'s config with `overrides` (and --epochs, --encoder); its model/ folder."""
    run_dir = work / "runs" / name
    settings = [
        *overrides,
        *([f"train.epochs={args.epochs}"] if args.epochs else []),
        *([f"encoder.name={args.encoder}"] if args.encoder else []),
    ]
    if not (run_dir / "model" / "model.json").is_file():
        xel("run", "--config", CONFIGS[corpus], "--run-dir", run_dir, *(f"--set={s}" for s in settings))
    return run_dir / "model"


def link(model: Path, mentions: pl.DataFrame, kb: Path, out: Path) -> pl.DataFrame:
    """`xel-cli link --score` of `mentions` against `kb`; (mention_id, kb_id, is_nil, top_triage_kb_id)."""
    out.mkdir(parents=True, exist_ok=True)
    corpus = out.parent / f"{out.name}-mentions.jsonl"
    mentions.drop("split", "named", strict=False).write_ndjson(corpus)
    xel("link", "--model", model, "--mentions", corpus, "--kb", kb, "--out", out, "--score", "--force")
    return links_table(out / "links.parquet")


def links_table(path: Path) -> pl.DataFrame:
    """(mention_id, kb_id, is_nil, top_triage_kb_id) of a links.parquet; the last is the candidate of
    highest triage score (triage's rank 1: ties keep triage's order, as its list does), null without any."""
    links = pl.read_parquet(path)
    top = (
        links.select("mention_id", "candidates")
        .explode("candidates")
        .drop_nulls("candidates")
        .unnest("candidates")
        .with_columns(pl.int_range(pl.len()).over("mention_id").alias("position"))
        .sort(["mention_id", "triage_score", "position"], descending=[False, True, False])
        .group_by("mention_id", maintain_order=True)
        .first()
        .select("mention_id", pl.col("kb_id").alias("top_triage_kb_id"))
    )
    return links.select("mention_id", "kb_id", "is_nil").join(top, on="mention_id", how="left")


def micro_average(links: pl.DataFrame, gold: pl.DataFrame, column: str = "kb_id") -> float:
    """KBP2010 micro-average: share of gold mentions (mention_id, gold_kb_id) whose link `column` is the
    gold id, every NIL equal (a NIL link, `is_nil` or a null id, is right for a gold NIL)."""
    return pooled_micro_average([(links, gold)], column)


def pooled_micro_average(parts: list[tuple[pl.DataFrame, pl.DataFrame]], column: str = "kb_id") -> float:
    """`micro_average` over several (links, gold) pairs at once: right links of all over gold mentions of
    all (the same mention in two pairs, e.g. two folds, counts twice); NaN without any gold mention."""
    right = [_right_links(links, gold, column) for links, gold in parts]
    total = sum(len(r) for r in right)
    return float(sum(r.sum() for r in right) / total) if total else float("nan")


def _right_links(links: pl.DataFrame, gold: pl.DataFrame, column: str) -> pl.Series:
    """Per gold mention, whether its link `column` is right (see `micro_average`)."""
    both = gold.join(links, on="mention_id", how="left")
    nil_link = pl.col(column).is_null() | pl.col(column).str.starts_with("NIL")
    if column == "kb_id":
        nil_link = nil_link | pl.col("is_nil").fill_null(True)
    right = (
        pl.when(pl.col("gold_kb_id") == "NIL")
        .then(nil_link)
        .otherwise(~nil_link & (pl.col(column) == pl.col("gold_kb_id")))
    )
    return both.select(right.fill_null(False).alias("right"))["right"]


def wrong_to_seen(links: pl.DataFrame, unseen_gold: pl.DataFrame, seen_ids: set[str]) -> str:
    """How many unseen-entity mentions were linked to a wrong entity, and how many of those to a seen one."""
    wrong = unseen_gold.join(links, on="mention_id").filter(
        ~pl.col("is_nil").fill_null(True) & (pl.col("kb_id") != pl.col("gold_kb_id"))
    )
    to_seen = wrong.filter(pl.col("kb_id").is_in(list(seen_ids))).height
    return f"  unseen-entity mentions linked to a wrong entity: {wrong.height}, {to_seen} of them to a seen one"


def renamed_kb(source: Path, out: Path) -> dict[str, str]:
    """Write `source` with every id renamed (`x:` + a hash: nothing of the old ids carries over); old -> new."""
    kb = pl.read_ndjson(source, infer_schema_length=None)
    new = kb.select(
        pl.col("kb_id"),
        pl.col("kb_id")
        .map_batches(
            lambda ids: pl.Series([f"x:{hashlib.blake2b(i.encode(), digest_size=6).hexdigest()}" for i in ids])
        )
        .alias("new"),
    )
    kb.with_columns(new["new"].alias("kb_id")).write_ndjson(out)
    return dict(zip(new["kb_id"].to_list(), new["new"].to_list()))


def seen_half(kb_ids: list[str], fold: int = 0) -> set[str]:
    """The entities of fold `fold`'s 'seen' half: fold 0, those whose id's hash is even (a fixed cut,
    about half); fold 1, the others, so over both folds every entity is seen once and unseen once."""
    return {i for i in kb_ids if hashlib.blake2b(i.encode(), digest_size=4).digest()[-1] % 2 == fold}


def row(name: str, *cells: float) -> str:
    return f"{name:<44}" + "".join(f"{c:>10.3f}" for c in cells)


def cross_kb(source: str, target: str, work: Path, args: argparse.Namespace) -> Iterator[str]:
    """`source`'s model(s) on `target`'s test mentions and KB, then `target`'s own model and the alias
    baseline (lines as each is done: the in-KB run may be the long one)."""
    test = corpus_mentions(target).filter(pl.col("split") == "test")
    gold = test.select(pl.col("id").alias("mention_id"), "gold_kb_id")
    yield f"{source}'s model on {target}'s {test.height} test mentions and {target}'s KB: micro-average"
    for variant in args.variants:
        model = train(f"{source}-{variant}", source, work, args, *VARIANTS[variant])
        links = link(model, test, kb_path(target), work / "links" / f"{source}-{variant}-on-{target}")
        yield row(f"{source} model ({variant}) on {target}'s KB", micro_average(links, gold))
        yield row("  its triage's top candidate", micro_average(links, gold, "top_triage_kb_id"))
    own = link(
        train(f"{target}-own", target, work, args), test, kb_path(target), work / "links" / f"{target}-own-on-{target}"
    )
    yield row(f"in-KB model ({target}, own KB)", micro_average(own, gold))
    yield row("alias baseline (in-KB triage's top candidate)", micro_average(own, gold, "top_triage_kb_id"))


def disjoint(corpus: str, work: Path, args: argparse.Namespace) -> Iterator[str]:
    """The entity-disjoint split of `corpus` (see the module doc): micro-average seen, unseen, all, for
    each fold of `args.folds`, then both folds pooled (each entity seen in one, unseen in the other)."""
    mentions = corpus_mentions(corpus)
    kb_ids = pl.read_ndjson(kb_path(corpus), infer_schema_length=None)["kb_id"].to_list()
    folder = work / "disjoint" / corpus
    folder.mkdir(parents=True, exist_ok=True)
    renamed = renamed_kb(kb_path(corpus), folder / "kb-renamed.jsonl")
    test = mentions.filter(pl.col("split") == "test")
    own = link(
        train(f"{corpus}-own", corpus, work, args), test, kb_path(corpus), work / "links" / f"{corpus}-own-on-{corpus}"
    )
    pooled: dict[str, list] = {}
    for fold in args.folds:
        seen = seen_half(kb_ids, fold)
        parts = _disjoint_parts(test, seen)
        yield from [
            f"entity-disjoint {corpus}, fold {fold}: {len(seen)} of {len(kb_ids)} entities seen in training; test "
            f"mentions {parts['seen'].height} of seen entities, {parts['unseen'].height} of unseen, "
            f"{parts['all'].height} in all (NILs count in all only)",
            f"{'micro-average':<44}{'seen':>10}{'unseen':>10}{'all':>10}",
        ]
        renamed_parts = {name: part.with_columns(pl.col("gold_kb_id").replace(renamed)) for name, part in parts.items()}
        training = _seen_half_inputs(mentions, kb_path(corpus), seen, folder / f"fold{fold}", args.training_kb)
        for variant in args.variants:
            run_name = f"{corpus}-disjoint-{args.training_kb}-kb-fold{fold}-{variant}"
            model = train(run_name, corpus, work, args, *training, *VARIANTS[variant])
            links = link(
                model,
                test.with_columns(pl.col("gold_kb_id").replace(renamed)),
                folder / "kb-renamed.jsonl",
                work / "links" / run_name,
            )
            yield row(
                f"seen-half model ({variant}), renamed KB", *(micro_average(links, p) for p in renamed_parts.values())
            )
            yield wrong_to_seen(links, renamed_parts["unseen"], {renamed[i] for i in seen})
            pooled.setdefault(variant, []).append((links, renamed_parts))
        pooled.setdefault("in-KB", []).append((own, parts))
        yield from _baseline_rows(own, parts)
    if len(args.folds) > 1:
        yield from _pooled_rows(pooled, args.folds)


def _seen_half_inputs(mentions: pl.DataFrame, kb: Path, seen: set[str], folder: Path, training_kb: str) -> list[str]:
    """Write the seen half's mentions (every split: gold in `seen`, or NIL) and, for `training_kb` "half",
    a KB of the seen entities alone, under `folder`; the `--set` overrides that train on them. With "full"
    the training KB keeps the unseen entities: they are candidates in training that are never gold, which
    teaches a ranker to push them down (the protocol of the first figures in docs/any-kb.md)."""
    folder.mkdir(parents=True, exist_ok=True)
    training = folder / "mentions-seen-half.jsonl"
    mentions.filter((pl.col("gold_kb_id") == "NIL") | pl.col("gold_kb_id").is_in(list(seen))).write_ndjson(training)
    if training_kb == "full":
        return [f"inputs.mentions={training}"]
    half = folder / "kb-seen-half.jsonl"
    entities = pl.read_ndjson(kb, infer_schema_length=None)
    entities.filter(pl.col("kb_id").is_in(list(seen))).write_ndjson(half)
    return [f"inputs.mentions={training}", f"inputs.kb={half}"]


def _disjoint_parts(test: pl.DataFrame, seen: set[str]) -> dict[str, pl.DataFrame]:
    """Gold (mention_id, gold_kb_id) of the test mentions of seen entities, of unseen ones, and of all."""
    gold = test.select(pl.col("id").alias("mention_id"), "gold_kb_id")
    gold_seen = (pl.col("gold_kb_id") == "NIL") | pl.col("gold_kb_id").is_in(list(seen))
    return {
        "seen": gold.filter(gold_seen & (pl.col("gold_kb_id") != "NIL")),
        "unseen": gold.filter(~gold_seen),
        "all": gold,
    }


def _baseline_rows(own: pl.DataFrame, parts: dict[str, pl.DataFrame]) -> list[str]:
    """The in-KB model's and the alias baseline's rows on one fold's parts."""
    return [
        row("in-KB model (every training mention, own KB)", *(micro_average(own, p) for p in parts.values())),
        row(
            "alias baseline (in-KB triage's top candidate)",
            *(micro_average(own, p, "top_triage_kb_id") for p in parts.values()),
        ),
    ]


def _pooled_rows(pooled: dict[str, list], folds: list[int]) -> Iterator[str]:
    """Every variant's micro-average over the folds at once (a mention counts once per fold)."""
    yield f"both folds pooled ({', '.join(map(str, folds))}): every entity seen in one fold, unseen in the other"
    yield f"{'micro-average':<44}{'seen':>10}{'unseen':>10}{'all':>10}"
    for variant, runs in pooled.items():
        cells = [pooled_micro_average([(links, parts[p]) for links, parts in runs]) for p in ("seen", "unseen", "all")]
        name = "in-KB model (own KB)" if variant == "in-KB" else f"seen-half models ({variant}), renamed KB"
        yield row(name, *cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", default="demo-on-meantime,meantime-on-demo,disjoint")
    parser.add_argument("--disjoint-corpus", choices=("meantime", "demo"), default="meantime")
    parser.add_argument(
        "--variants",
        default="own,any",
        help="own (the config's model), any (triage.use_priors = false), any-product / any-similarity "
        "(and train.pair_input = product / similarity)",
    )
    parser.add_argument(
        "--folds",
        default="0,1",
        help="disjoint folds: 0 sees the entities whose id hash is even, 1 the others; both, pooled at the end",
    )
    parser.add_argument(
        "--training-kb",
        choices=("half", "full"),
        default="half",
        help="disjoint: the seen-half model trains against the seen entities alone (half) or the whole KB (full)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs of every run (default: each config's)")
    parser.add_argument("--encoder", default=None, help="encoder.name of every run (default: each config's)")
    parser.add_argument("--work", type=Path, default=ROOT / "artifacts" / "bench-kb-transfer")
    args = parser.parse_args()
    args.variants = [v for v in args.variants.split(",") if v]
    args.folds = sorted({int(f) for f in args.folds.split(",") if f})
    if not args.folds or set(args.folds) - {0, 1}:
        parser.error("--folds takes 0, 1 or 0,1")
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)}; use {sorted(VARIANTS)}")
    studies = {
        "demo-on-meantime": lambda: cross_kb("demo", "meantime", args.work, args),
        "meantime-on-demo": lambda: cross_kb("meantime", "demo", args.work, args),
        "disjoint": lambda: disjoint(args.disjoint_corpus, args.work, args),
    }
    for name in args.studies.split(","):
        if name not in studies:
            parser.error(f"unknown study {name!r}; use {', '.join(studies)}")
        for line in studies[name]():
            print(line, flush=True)
        print(flush=True)
    print(json.dumps({"work": str(args.work), "variants": args.variants}))


if __name__ == "__main__":
    main()
