"""This checkout against an earlier release, side by side: encode's and link's speed, and the links.

    python bench/vs_release.py [--rev 889d40c] [--config configs/meantime.toml] [--repeats 2]
                               [--precisions auto,fp32] [--work DIR] [--release-dir DIR] [--json FILE]

`--config` is a path inside the checkout (each side runs its own copy of it), or an absolute one.

Issue 22's first goal is stated against release 889d40c: `xel-cli encode` on the MEANTIME
config and `xel-cli link` on MEANTIME's test mentions at least twice as fast, with the test
micro-average within 0.005 of fp32 in every language. This script measures exactly that in one
run, on one machine:

- the release's files are exported with `git archive` beside this checkout
  (`../xel-release-<commit>`, or `--release-dir`; made once and reused while its `.xel-release-commit`
  names the same commit; beside it so that the config's `../../shared` paths hold) and run with
  the same Python as this checkout (its dependencies are a subset of ours);
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
encoder is built there once); each version's stores behave as they do for a user. A rerun in the
same `--work` reuses the runs (their stages are up to date, so "run in" is seconds) and the
stores, so "first" is the first link after a run only in a fresh `--work`.

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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pipeline, whichever xel is installed

from pipeline.core.config import PRECISION_EXPECTED, PRECISIONS  # noqa: E402
from pipeline.core.config_file import load_config  # noqa: E402
from pipeline.core.errors import PipelineError  # noqa: E402
from pipeline.scoring.decisions import read_metrics  # noqa: E402
from pipeline.studies.subrun import micro_average  # noqa: E402

COMMIT_FILE = ".xel-release-commit"


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


def release_commit(rev: str) -> str:
    """The full commit hash `rev` names in this checkout; exits with one line when it names none."""
    found = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True, text=True
    )
    if found.returncode != 0:
        sys.exit(f"error: {rev!r} names no commit of this checkout ({found.stderr.strip() or 'git failed'})")
    return found.stdout.strip()


def export_release(commit: str, folder: Path) -> Path:
    """The files of `commit`, exported to `folder` once; a folder already there is reused only when its
    COMMIT_FILE names the same commit. Extracted under a temporary name and renamed, so an interrupted
    export is never reused."""
    if folder.exists():
        marker = folder / COMMIT_FILE
        held = marker.read_text(encoding="utf-8").strip() if marker.exists() else "an unknown commit"
        if held != commit:
            sys.exit(f"error: {folder} holds {held}, not {commit}; remove it or give another --release-dir")
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(partial)], input=archive, check=True)
    (partial / COMMIT_FILE).write_text(commit + "\n", encoding="utf-8")
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


def positive(text: str) -> int:
    """argparse type: an int of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def precision_list(text: str) -> list[str]:
    """argparse type: distinct precisions, comma-separated."""
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in PRECISIONS]
    if unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct precisions; {PRECISION_EXPECTED}")
    return names


def main() -> int:
    try:
        return compare()
    except (PipelineError, OSError) as error:
        sys.exit(f"error: {error}")


def compare() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="889d40c", help="the release to compare with (a git revision)")
    parser.add_argument("--config", default="configs/meantime.toml", help="relative to each side's checkout")
    parser.add_argument("--repeats", type=positive, default=2)
    parser.add_argument(
        "--precisions", type=precision_list, default="auto,fp32", help="this checkout's encoder precisions"
    )
    parser.add_argument("--work", type=Path, default=ROOT / "artifacts" / "vs-release")
    parser.add_argument("--release-dir", type=Path, default=None, help="where the release's files go")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    config = ROOT / args.config
    mentions_file = load_config(config).inputs.mentions
    if not mentions_file.exists():
        sys.exit(f"skipped: {mentions_file} is absent (MEANTIME: ../shared/data)")
    if args.json is not None and not args.json.parent.is_dir():
        sys.exit(f"error: --json {args.json}: its folder does not exist")
    commit = release_commit(args.rev)
    release_dir = (args.release_dir or ROOT.parent / f"xel-release-{commit[:12]}").resolve()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"

    # name -> (code root, extra --set arguments)
    sides: dict[str, tuple[Path, list[str]]] = {f"release {args.rev}": (export_release(commit, release_dir), [])}
    for precision in args.precisions:
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
    print(
        f"\n{n_mentions} {split} mentions linked; best of {args.repeats} unless said; ratios against {reference} ({commit[:12]})"
    )
    print(
        f"{'side':28} {'encode s':>9} {'(process)':>9} {'encode x':>8} {'link m/s':>9} {'first m/s':>9} {'link x':>6}  "
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
            f"{base_encode / row['encode_seconds']:7.2f}x {row['link_mentions_per_second']:9.1f} "
            f"{row['first_link_mentions_per_second']:9.1f} {row['link_mentions_per_second'] / base_link:5.2f}x  "
            + "  ".join(f"{scores[name].get(lang, float('nan')):5.3f}" for lang in columns)
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
