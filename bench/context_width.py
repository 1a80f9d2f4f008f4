"""The context-width frontier: linking quality and encode speed per `max_context_tokens` and precision.

    python bench/context_width.py [--config configs/meantime.toml] [--widths 64,128,256,512]
                                  [--precisions fp32,int8] [--seeds 13,17,29] [--work DIR]
                                  [--set SECTION.KEY=VALUE ...]

For each precision and width, one full `xel-cli run` of `--config` (its own run folder under
`--work`, so a rerun reuses every finished one) with `encoder.max_context_tokens` and
`encoder.precision` set. Prints, side by side, the evaluation split's KBP2010 micro-average
(overall and per language, from evaluate's metrics.json; MEANTIME's config scores named
mentions of test) and encode's mentions/s (the encode stage's mentions over its seconds, which
include the entities it encodes), with each row's difference in micro-average and its speed
ratio to the first precision at the widest width, and the largest change of any one language
(`max |Δ lang|`, what issue 22's bar of 0.005 is about).

`--seeds` trains one ranker per `train.seed` for each row (run folders PRECISION-WIDTH-sSEED) and
prints the mean over them, with the largest per-language standard deviation (`sd lang`): a
difference between two precisions smaller than the seeds' own spread is a near-tie flipping, not
the precision.

On MEANTIME every run encodes all splits and trains the ranker: tens of minutes each on a
2-core CPU, so the full grid takes hours there (minutes on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MICRO_AVERAGE = "kbp2010_micro_average"


def run_once(config: Path, run_dir: Path, width: int, precision: str, extra: list[str]) -> dict:
    """One `xel-cli run` (finished stages are up to date and skipped); its evaluation and encode figures."""
    command = [
        sys.executable,
        str(ROOT / "cli.py"),
        "run",
        "--config",
        str(config),
        "--run-dir",
        str(run_dir),
        "--set",
        f"encoder.max_context_tokens={width}",
        "--set",
        f"encoder.precision={precision}",
    ]
    for assignment in extra:
        command += ["--set", assignment]
    started = time.time()
    result = subprocess.run(
        command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(
            f"xel-cli run failed ({result.returncode}) at width {width}, {precision}:\n"
            f"{(result.stdout + result.stderr)[-3000:]}"
        )
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text(encoding="utf-8"))
    encode = json.loads((run_dir / "encode" / "manifest.json").read_text(encoding="utf-8"))
    by_language = {lang: scores[MICRO_AVERAGE]["micro_average"] for lang, scores in metrics["by_language"].items()}
    return {
        "width": width,
        "precision": precision,
        "micro_average": metrics["overall"][MICRO_AVERAGE]["micro_average"],
        "by_language": by_language,
        "split": metrics.get("split"),
        "mentions_per_second": encode["counts"]["mentions"] / max(encode["seconds"], 1e-9),
        "run_seconds": time.time() - started,
    }


def seed_list(text: str) -> list[int]:
    """`--seeds`: distinct whole numbers, comma-separated ("" for none: the config's own seed)."""
    if not text:
        return []
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"give distinct whole numbers, comma-separated, as 13,17,29 (got {text!r})")
    return seeds


def seeded_folder(first: Path, folder: Path) -> None:
    """Start a seed's new run `folder` from the first seed's triage and encode, which only train.seed
    separates from it: each stage's key still decides whether the copy is up to date."""
    if folder.exists() or not first.is_dir():
        return
    folder.mkdir(parents=True)
    for stage in ("triage", "encode"):
        if (first / stage).is_dir():
            shutil.copytree(first / stage, folder / stage)


def mean_row(runs: list[dict]) -> dict:
    """One row of `runs` of the same precision and width (one per seed): the mean micro-average, per
    language and encode mentions/s; `sd_language`, the largest per-language standard deviation (0 for one run)."""
    languages = sorted({lang for run in runs for lang in run["by_language"]})
    per_language = {
        lang: [run["by_language"][lang] for run in runs if lang in run["by_language"]] for lang in languages
    }
    return {
        **{key: value for key, value in runs[0].items() if key != "seed"},
        "micro_average": statistics.fmean(run["micro_average"] for run in runs),
        "by_language": {lang: statistics.fmean(values) for lang, values in per_language.items()},
        "mentions_per_second": statistics.fmean(run["mentions_per_second"] for run in runs),
        "run_seconds": sum(run["run_seconds"] for run in runs),
        "seeds": [run.get("seed") for run in runs],
        "sd_language": max((statistics.stdev(v) for v in per_language.values() if len(v) > 1), default=0.0),
    }


def print_table(rows: list[dict]) -> None:
    """One line per (precision, width): micro-average overall and per language, the difference and the
    largest per-language difference to the reference (the widest width's first precision), the seeds'
    largest per-language sd, encode mentions/s and its ratio to the reference."""
    languages = sorted({lang for row in rows for lang in row["by_language"]})
    reference = max(rows, key=lambda row: (row["width"], -rows.index(row)))
    seeds = reference.get("seeds") or [None]
    print(
        f"evaluation split {reference['split']}; reference: {reference['precision']} at {reference['width']} sub-words"
        + (f"; each row the mean of seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else "")
    )
    print(
        f"{'precision':<9} {'width':>5} {'micro':>6} "
        + " ".join(f"{lang:>6}" for lang in languages)
        + f" {'Δ micro':>8} {'max |Δ lang|':>12} {'sd lang':>7} {'mentions/s':>11} {'speed':>6}"
    )
    for row in rows:
        values = [row["by_language"].get(lang, float("nan")) for lang in languages]
        cells = " ".join(f"{value:>6.3f}" for value in values)
        largest = max(
            abs(value - reference["by_language"].get(lang, float("nan"))) for lang, value in zip(languages, values)
        )
        print(
            f"{row['precision']:<9} {row['width']:>5} {row['micro_average']:>6.3f} {cells} "
            f"{row['micro_average'] - reference['micro_average']:>+8.3f} {largest:>12.3f} "
            f"{row.get('sd_language', 0.0):>7.3f} {row['mentions_per_second']:>11.1f} "
            f"{row['mentions_per_second'] / reference['mentions_per_second']:>5.2f}x"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "meantime.toml")
    parser.add_argument("--widths", default="64,128,256,512", help="max_context_tokens values, comma-separated")
    parser.add_argument("--precisions", default="fp32,int8", help="encoder precisions, comma-separated")
    parser.add_argument(
        "--work",
        type=Path,
        default=ROOT / "artifacts" / "bench-context-width",
        help="folder of the runs (one per precision and width)",
    )
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        help="a further setting of every run, as xel-cli's --set (repeatable)",
    )
    parser.add_argument(
        "--seeds",
        type=seed_list,
        default="",
        help="train.seed values, comma-separated: one run per seed for each row, which shows their mean; "
        "each seed's run starts from the first seed's triage and encode",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    widths = sorted(int(width) for width in args.widths.split(","))
    precisions = [name.strip() for name in args.precisions.split(",") if name.strip()]
    seeds = args.seeds
    rows = []
    for precision in precisions:
        for width in widths:
            runs = []
            for seed in seeds or [None]:
                folder = f"{precision}-{width}" + (f"-s{seed}" if seed is not None else "")
                extra = args.assignments + ([f"train.seed={seed}"] if seed is not None else [])
                if runs:
                    seeded_folder(
                        args.work.resolve() / f"{precision}-{width}-s{seeds[0]}", args.work.resolve() / folder
                    )
                runs.append(
                    {
                        **run_once(args.config.resolve(), args.work.resolve() / folder, width, precision, extra),
                        "seed": seed,
                    }
                )
                print(
                    f"{folder}: micro-average {runs[-1]['micro_average']:.3f} ({runs[-1]['run_seconds']:.0f} s)",
                    flush=True,
                )
            rows.append(mean_row(runs))
    print_table(rows)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
