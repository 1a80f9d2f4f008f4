"""Write the ambiguity set's docs.jsonl and mentions.jsonl from the sentences written for it.

    python bench/data/ambiguity/build.py [--check]

Reads `sentences/<lang>.txt` (a "== SENSE" line starts a sense: a kb_id of `kb.jsonl`, or
`NIL:<what it names>` for a sense the KB lacks; then one "split: sentence" line per mention,
the mention marked `[[so]]`) and writes, beside this file, one document per sentence
(`docs.jsonl`: doc_id, lang, text) and one mention per sentence (`mentions.jsonl`: id,
doc_id, lang, mention, doc_start/doc_end into the document, gold_kb_id, split, and `sense`,
which xel does not read: the KB id or the NIL label, so a NIL mention says what it names).
`--check` writes nothing and exits 1 when the files on disk differ from what it would write.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LANGUAGES = ("en", "es", "ru", "zh")
SPLITS = ("train", "dev", "test")
MARKED = re.compile(r"\[\[(.+?)\]\]")
NIL_PREFIX = "NIL:"


def parse(path: Path, lang: str, kb_ids: set[str]) -> list[dict]:
    """The sentences of one language file: [{lang, sense, split, text, start, end}], in file order.

    Raises ValueError naming the file and line for a sense the KB lacks, an unknown split,
    a sentence before any sense or a sentence without exactly one marked mention.
    """
    items, sense = [], None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("=="):
            sense = line[2:].strip()
            if not sense.startswith(NIL_PREFIX) and sense not in kb_ids:
                raise ValueError(f"{path}:{number}: sense {sense!r} is neither a KB id nor NIL:<label>")
            continue
        split, _, sentence = line.partition(":")
        if split not in SPLITS or sense is None:
            raise ValueError(f"{path}:{number}: expected 'train|dev|test: sentence' after a '== SENSE' line")
        marks = MARKED.findall(sentence)
        if len(marks) != 1:
            raise ValueError(f"{path}:{number}: a sentence marks exactly one [[mention]], this one {len(marks)}")
        match = MARKED.search(sentence.strip())
        text = MARKED.sub(r"\1", sentence.strip())
        start = match.start()
        items.append(
            {"lang": lang, "sense": sense, "split": split, "text": text, "start": start, "end": start + len(marks[0])}
        )
    return items


def records(items: list[dict]) -> tuple[list[dict], list[dict]]:
    """(docs records, mentions records) of the parsed sentences, numbered per language in file order."""
    docs, mentions, counts = [], [], dict.fromkeys(LANGUAGES, 0)
    for item in items:
        counts[item["lang"]] += 1
        number = f"{item['lang']}-{counts[item['lang']]:03d}"
        doc_id = f"ambiguity:{item['lang']}:{counts[item['lang']]:03d}"
        docs.append({"doc_id": doc_id, "lang": item["lang"], "text": item["text"]})
        gold = "NIL" if item["sense"].startswith(NIL_PREFIX) else item["sense"]
        mentions.append(
            {
                "id": f"amb-{number}",
                "doc_id": doc_id,
                "lang": item["lang"],
                "mention": item["text"][item["start"] : item["end"]],
                "doc_start": item["start"],
                "doc_end": item["end"],
                "gold_kb_id": gold,
                "split": item["split"],
                "sense": item["sense"],
            }
        )
    return docs, mentions


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the files on disk; write nothing")
    check = parser.parse_args().check
    kb_ids = {json.loads(line)["kb_id"] for line in (HERE / "kb.jsonl").read_text(encoding="utf-8").splitlines()}
    items = [item for lang in LANGUAGES for item in parse(HERE / "sentences" / f"{lang}.txt", lang, kb_ids)]
    docs, mentions = records(items)
    outputs = {HERE / "docs.jsonl": jsonl(docs), HERE / "mentions.jsonl": jsonl(mentions)}
    if check:
        stale = [path.name for path, text in outputs.items() if not path.exists() or path.read_text("utf-8") != text]
        if stale:
            sys.exit(f"out of date with sentences/: {', '.join(stale)}; run python {Path(__file__).name}")
        return
    for path, text in outputs.items():
        path.write_text(text, encoding="utf-8")
    print(f"{len(mentions)} mentions in {len(LANGUAGES)} languages -> {', '.join(p.name for p in outputs)}")


if __name__ == "__main__":
    main()
