"""What `xel-cli link`'s corpus-wide checks cost: `check_corpus` against one plain read of the chunks.

    python bench/corpus_checks.py [--size 100000] [--chunk-mentions 10000]

Link reads the corpus once before linking (`pipeline.link.sources.check_corpus`: every
chunk read and checked, a few columns kept, ids / spans / document languages checked
across chunks), then again chunk by chunk to link it. This times that pre-read beside
one plain read of every chunk (what linking itself does before encoding), on a corpus of
MEANTIME's named mentions copied into new documents (`bench/link.py`'s corpora, written
under artifacts/bench-link/ if missing), and prints both, their ratio and the process's
peak RSS. Needs ../shared/data/meantime.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000, help="mentions in the corpus")
    parser.add_argument("--chunk-mentions", type=int, default=10_000, help="link's --chunk-mentions")
    parser.add_argument("--context-chars", type=int, default=2000, help="the model's context window in characters")
    args = parser.parse_args()
    from link import MEANTIME, write_corpus

    from pipeline.link.sources import check_corpus, mention_chunks

    if not MEANTIME.exists():
        sys.exit(f"needs {MEANTIME}")
    corpus = write_corpus(args.size, "a")
    with tempfile.TemporaryDirectory() as work:

        def chunks():
            return mention_chunks(corpus, None, args.chunk_mentions, args.context_chars, False, Path(work))

        started = time.perf_counter()
        rows = sum(read().height for _, read in chunks())
        plain = time.perf_counter() - started
        started = time.perf_counter()
        count = check_corpus(chunks(), corpus)
        checked = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"{rows:,} mentions in {count} chunks of {args.chunk_mentions:,} ({corpus.name})")
    print(
        f"plain read of every chunk: {plain:.2f} s; check_corpus (read + checks across chunks): {checked:.2f} s "
        f"= {checked / plain:.2f}x the plain read; peak RSS of this process {peak:.2f} GB"
    )


if __name__ == "__main__":
    main()
