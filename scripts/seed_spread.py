"""Spread over seeds of per-language test micro-average and NIL F1, from finished evaluate folders.

    python scripts/seed_spread.py [--languages en,es,it,nl] LABEL=RUN_DIR[,RUN_DIR...] ...

Each label names a set of run folders (one per seed). Reads each run's
evaluate/metrics.json: KBP2010 micro-average and strong_nil_match F1 per language as
scored (the decision written to system.tab), and, where the run has them, the NIL
methods of `metrics["nil_methods"]` (rows "<label> threshold", "<label> classifier" and, with the
ranker's NIL option, "<label> nota").
Prints mean ± sample standard deviation (ddof = 1) per language.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

# MEANTIME's, the default; `--languages` names others (the demo: en,es,zh,ar,ru,fr,de).
LANGUAGES = ("en", "es", "it", "nl", "all")


def rows_of(run: Path, languages: tuple[str, ...] = LANGUAGES) -> dict[str, dict[str, tuple[float, float]]]:
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text(encoding="utf-8"))
    out = {"scored": {}}
    for lang in languages:
        group = metrics["overall"] if lang == "all" else metrics["by_language"][lang]
        out["scored"][lang] = (group["kbp2010_micro_average"]["micro_average"], group["strong_nil_match"]["f1"])
    for row in metrics.get("nil_methods", []):
        out.setdefault(row["method"], {})[row["lang"]] = (row["micro_average"], row["nil_f1"])
    return out


def main() -> None:
    arguments = sys.argv[1:]
    languages = LANGUAGES
    if arguments[:1] == ["--languages"]:
        languages = (*arguments[1].split(","), "all")
        arguments = arguments[2:]
    print(f"| setting | seeds | {' | '.join(languages)} |")
    print("| --- | --- |" + " --- |" * len(languages))
    for argument in arguments:
        label, runs = argument.split("=", 1)
        per_run = [rows_of(Path(run), languages) for run in runs.split(",")]
        for method in per_run[0]:
            for index, measure in ((0, "micro-average"), (1, "NIL F1")):
                cells = []
                for lang in languages:
                    values = np.array([run[method][lang][index] for run in per_run])
                    cells.append(f"{values.mean():.3f} ± {values.std(ddof=1):.3f}")
                print(f"| {label} {method} {measure} | {len(per_run)} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
