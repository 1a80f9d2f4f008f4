"""This checkout against an earlier release, side by side: encode's and link's speed, and the links.

    python bench/vs_release.py [--rev 889d40c] [--config configs/meantime.toml] [--repeats 2]
                               [--precisions auto,fp32] [--work DIR] [--release-dir DIR] [--json FILE]

Issue 22's first goal is stated against release 889d40c: `xel-cli encode` on the MEANTIME
config and `xel-cli link` on MEANTIME's test mentions at least twice as fast, with the test
micro-average within 0.005 of fp32 in every language. This script measures exactly that in one
run, on one machine:

- the release's files are exported with `git archive` beside this checkout (`../xel-release-REV`,
  or `--release-dir`; made once, reused; beside it so that the config's `../../shared` paths
  hold) and run with the same Python as this checkout (its dependencies are a subset of ours);
- each side (the release, and this checkout at each of `--precisions`; `auto` is the config as
  it is) does one full `xel-cli run` of its own copy of `--config` (untimed), giving the test
  micro-average per language from evaluate's metrics.json;
- then `xel-cli link` of the evaluation split's named mentions with that run's model folder,
  `--repeats` times (each into a new folder), sides alternated so that load on the machine hits
  them alike: the first link after the run and the best of all, as mentions over the whole
  process's seconds (start-up and loading included: what a user waits for);
- then `xel-cli encode --force`, `--repeats` times, sides alternated: the encode stage's own
  seconds (its manifest) and the whole process's.

Ratios are against the release. All sides share one `XEL_CACHE` under `--work` (the offline
encoder is built there once); each version's stores behave as they do for a user.

On MEANTIME each side's run takes a few minutes on a 2-core CPU (the ranker trains 100 epochs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pipeline.core.config_file import load_config
from pipeline.scoring.decisions import read_metrics
from pipeline.studies.subrun import micro_average

ROOT = Path(__file__).resolve().parents[1]


def xel(code_root: Path, args: list[str], cache: Path) -> float:
    """Run `xel-cli ARGS` from `code_root`'s code; its wall seconds. Exits with the output on failure."""
    command = [sys.executable, str(code_root / "cli.py"), *args]
    env = {**os.environ, "PYTHONPATH": str(code_root), "XEL_CACHE": str(cache)}
    started = time.perf_counter()
    result = subprocess.run(command, cwd=code_root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(
            f"{' '.join(args[:1])} failed ({result.returncode}) in {code_root}:\n{(result.stdout + result.stderr)[-3000:]}"
        )
    return seconds


def export_release(rev: str, folder: Path) -> Path:
    """The files of git revision `rev` of this checkout, exported to `folder` (once: kept when there).

    Extracted beside it under a temporary name and renamed, so an interrupted export is never reused."""
    if folder.exists():
        return folder
    exported = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True)
    if exported.returncode != 0:
        sys.exit(f"git archive {rev} failed: {exported.stderr.decode(errors='replace').strip()}")
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(partial)], input=exported.stdout, check=True)
    partial.rename(folder)
    return folder


def split_mentions(mentions_file: Path, split: str, out: Path) -> int:
    """Write `split`'s named mentions as JSONL, their count. A repeated id becomes id#start-end, as
    `inputs.rename_duplicate_ids` names it: the release's link has no `--rename-duplicate-ids`."""
    seen: set[str] = set()
    rows = []
    for line in mentions_file.read_text(encoding="utf-8").splitlines():
        mention = json.loads(line)
        if mention.get("split") != split or not mention.get("named", True):
            continue
        if mention["id"] in seen:
            start, end = mention.get("doc_start", mention.get("start")), mention.get("doc_end", mention.get("end"))
            mention["id"] = f"{mention['id']}#{start}-{end}"
        seen.add(mention["id"])
        rows.append(json.dumps(mention, ensure_ascii=False))
    out.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return len(rows)


def quality(metrics: dict) -> dict[str, float]:
    """Micro-average overall ("all") and per language from an evaluate metrics.json."""
    return {"all": micro_average(metrics), **{lang: micro_average(metrics, lang) for lang in metrics["by_language"]}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="889d40c", help="the release to compare with (a git revision)")
    parser.add_argument("--config", default="configs/meantime.toml", help="relative to each side's checkout")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precisions", default="auto,fp32", help="this checkout's encoder precisions")
    parser.add_argument("--work", type=Path, default=ROOT / "artifacts" / "vs-release")
    parser.add_argument("--release-dir", type=Path, default=None, help="where the release's files go")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    release_dir = args.release_dir or ROOT.parent / f"xel-release-{args.rev}"
    config = ROOT / args.config
    mentions_file = load_config(config).inputs.mentions
    if not mentions_file.exists():
        sys.exit(f"skipped: {mentions_file} is absent (MEANTIME: ../shared/data)")

    # name -> (code root, extra --set arguments)
    sides: dict[str, tuple[Path, list[str]]] = {
        f"release {args.rev}": (export_release(args.rev, release_dir.resolve()), [])
    }
    for precision in args.precisions.split(","):
        extra = [] if precision == "auto" else ["--set", f"encoder.precision={precision}"]
        sides[f"this checkout, {precision}"] = (ROOT, extra)

    runs, scores = {}, {}
    for index, (name, (code, extra)) in enumerate(sides.items()):
        run_dir = work / f"run-{index}"
        seconds = xel(code, ["run", "--config", str(code / args.config), "--run-dir", str(run_dir), *extra], cache)
        metrics = read_metrics(run_dir / "evaluate")
        runs[name], scores[name], split = run_dir, quality(metrics), metrics.get("split", "test")
        print(f"{name}: run in {seconds:.0f} s, {split} micro-average {scores[name]['all']:.3f}", flush=True)
    n_mentions = split_mentions(mentions_file, split, work / "split-mentions.jsonl")

    link_seconds: dict[str, list[float]] = {name: [] for name in sides}
    encode_seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for repeat in range(args.repeats):
        for index, (name, (code, _)) in enumerate(sides.items()):
            model, mentions, out = runs[name] / "model", work / "split-mentions.jsonl", work / f"link-{index}-{repeat}"
            link_args = ["link", "--model", str(model), "--mentions", str(mentions), "--out", str(out), "--force"]
            link_seconds[name].append(xel(code, link_args, cache))
    for repeat in range(args.repeats):
        for name, (code, extra) in sides.items():
            run_dir = runs[name]
            wall = xel(
                code,
                ["encode", "--config", str(code / args.config), "--run-dir", str(run_dir), "--force", *extra],
                cache,
            )
            stage = json.loads((run_dir / "encode" / "manifest.json").read_text(encoding="utf-8"))["seconds"]
            encode_seconds[name].append((stage, wall))

    reference = next(iter(sides))
    columns = ["all", *sorted(lang for lang in scores[reference] if lang != "all")]
    print(f"\n{n_mentions} {split} mentions linked; best of {args.repeats} unless said; ratios against {reference}")
    print(
        f"{'side':28} {'encode s':>9} {'(process)':>9} {'speed':>6} {'link m/s':>9} {'first':>6} {'speed':>6}  "
        + "  ".join(f"{lang:>5}" for lang in columns)
    )
    base_encode = min(s for s, _ in encode_seconds[reference])
    base_link = n_mentions / min(link_seconds[reference])
    rows = []
    for name in sides:
        row = {
            "side": name,
            "encode_seconds": min(s for s, _ in encode_seconds[name]),
            "encode_process_seconds": min(w for _, w in encode_seconds[name]),
            "link_mentions_per_second": n_mentions / min(link_seconds[name]),
            "first_link_mentions_per_second": n_mentions / link_seconds[name][0],
            "micro_average": scores[name],
        }
        rows.append(row)
        print(
            f"{name:28} {row['encode_seconds']:9.1f} {row['encode_process_seconds']:9.1f} "
            f"{base_encode / row['encode_seconds']:5.2f}x {row['link_mentions_per_second']:9.1f} "
            f"{row['first_link_mentions_per_second']:6.1f} {row['link_mentions_per_second'] / base_link:5.2f}x  "
            + "  ".join(f"{scores[name].get(lang, float('nan')):5.3f}" for lang in columns)
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
