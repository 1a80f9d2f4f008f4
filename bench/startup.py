"""Benchmark: start-up of `Linker.load` and of a `xel-cli run` whose stages are all up to date,
lazy (as xel loads now) against eager (as it loaded before issue 21).

Issue 21 measured `Linker.load` at 31 s and an up-to-date run at 8-10 s; the goal is <= 3 s
each. Both now import torch, transformers, faiss, tantivy and scikit-learn only where
they are needed, and the Linker loads its encoder at the first link that encodes. Eager
reproduces the earlier cost in the same code: the child imports torch and the ranker's
modules before the run (what the stage modules imported at the top), and touches
`linker.encoder` and `linker.model` inside the timed load (what `Linker.__init__` loaded).

Each measurement is a fresh process (nothing cached in memory but the OS's file cache),
repeated `--repeat` times; the best is printed, the lazy and eager side by side.

    python bench/startup.py [--run-dir artifacts/demo] [--repeat 3]

The run folder must hold a finished demo run (`scripts/demo.sh`, or `xel-cli run --config
configs/demo.toml`); without one, this runs it first (minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.toml"
# What the stage modules and the Linker's module imported at their top before (transformers came
# with the encoder, which eager Linker.load touches).
EAGER_IMPORTS = "import torch, pipeline.model.features, pipeline.model.ranker, pipeline.train.batches"

LOAD_CHILD = """
import json, sys, time
started = time.perf_counter()
{eager}
from pipeline.link.linker import Linker
linker = Linker.load(sys.argv[1])
{touch}
print(json.dumps({{"seconds": time.perf_counter() - started}}))
"""

RUN_CHILD = """
import json, sys, time
started = time.perf_counter()
{eager}
from cli import main
try:
    main(["--quiet", "run", "--config", sys.argv[1], "--run-dir", sys.argv[2]], prog_name="xel-cli")
except SystemExit as exit:
    assert not exit.code, exit.code
print(json.dumps({{"seconds": time.perf_counter() - started}}))
"""


def child_seconds(code: str, *args: str) -> float:
    """Wall seconds a fresh Python process reports for `code` (it prints {"seconds": ...} last)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=environment, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"child failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def best_of(repeat: int, code: str, *args: str) -> float:
    return min(child_seconds(code, *args) for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=ROOT / "artifacts" / "demo")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    run_dir = args.run_dir.resolve()
    if not (run_dir / "model" / "model.json").is_file():
        print(f"no finished demo run in {run_dir}: running it first (minutes)", flush=True)
        subprocess.run(
            [sys.executable, str(ROOT / "cli.py"), "--quiet", "run", "--config", str(DEMO), "--run-dir", str(run_dir)],
            cwd=ROOT,
            check=True,
        )
    child_seconds(RUN_CHILD.format(eager=""), str(DEMO), str(run_dir))  # warms the OS file cache for both
    rows = {
        "Linker.load": [
            best_of(args.repeat, LOAD_CHILD.format(eager=eager, touch=touch), str(run_dir / "model"))
            for eager, touch in (("", ""), (EAGER_IMPORTS, "linker.encoder, linker.model"))
        ],
        "run, all up to date": [
            best_of(args.repeat, RUN_CHILD.format(eager=eager), str(DEMO), str(run_dir))
            for eager in ("", EAGER_IMPORTS)
        ],
    }
    print(f"best of {args.repeat} fresh processes, seconds ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs)")
    print(f"{'':<22}{'lazy (now)':>12}{'eager (before)':>16}{'eager/lazy':>12}")
    for name, (lazy, eager) in rows.items():
        print(f"{name:<22}{lazy:>12.2f}{eager:>16.2f}{eager / lazy:>12.2f}")


if __name__ == "__main__":
    main()
