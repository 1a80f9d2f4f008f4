"""The run config: unknown keys and sections are refused, values are checked, overrides apply.

Every failure is a `ConfigError` whose code and message name the file (or `--set`) and
the offending key, so a user can fix it without reading code.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.config import RunConfig
from pipeline.core.config_file import load_config
from pipeline.core.errors import ConfigError

BASE = """name = "cfg"

[inputs]
mentions = "data/mentions.jsonl"
kb = "data/kb.jsonl"
"""


def write_config(folder: Path, extra: str = "", base: str = BASE) -> Path:
    path = folder / "run.toml"
    path.write_text(base + extra, encoding="utf-8")
    return path


def test_minimal_config_loads_with_paper_defaults(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    assert isinstance(config, RunConfig)
    assert config.name == "cfg"
    assert config.triage.k == 10
    assert config.train.negatives == 20 and config.train.margin == 1.0 and config.train.dropout == 0.2
    assert config.encoder.name_layer == 1
    assert config.evaluate.tune_split == "dev"


def test_unknown_key_in_section_names_file_and_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, "\n[train]\nepochz = 5\n")
    with pytest.raises(ConfigError, match="E201") as caught:
        load_config(path)
    assert caught.value.code == "E201"
    message = caught.value.format_message()
    assert str(path.resolve()) in message
    assert "'epochz'" in message and "[train]" in message
    assert "epochs" in message  # the known keys are listed


@pytest.mark.parametrize(
    "where, text, suggestion",
    [
        ("file", "\n[train]\nepochz = 5\n", "did you mean `epochs`?"),
        ("file", '\n[evaluate]\nnil_methods = "auto"\n', "did you mean `nil_method`?"),
        ("top level", "", "did you mean `name`?"),
        ("--set", "", "did you mean `learning_rate`?"),
    ],
)
def test_unknown_key_suggests_the_closest_known_key(tmp_path: Path, where: str, text: str, suggestion: str) -> None:
    """E201 names the closest known key when one is close (issue 21 item 16), and none when none is."""
    path = write_config(tmp_path, text, base='nmae = "cfg"\n' + BASE if where == "top level" else BASE)
    overrides = ("train.learning_rte=0.1",) if where == "--set" else ()
    with pytest.raises(ConfigError, match="E201") as caught:
        load_config(path, overrides)
    assert suggestion in caught.value.format_message(), caught.value.format_message()
    far = write_config(tmp_path, "\n[train]\nzzzz = 5\n")
    with pytest.raises(ConfigError, match="E201") as caught:
        load_config(far)
    assert "did you mean" not in caught.value.format_message()


def test_unknown_top_level_key_is_e201(tmp_path: Path) -> None:
    path = write_config(tmp_path, base="seed = 3\n" + BASE)
    with pytest.raises(ConfigError, match="E201") as caught:
        load_config(path)
    assert "'seed'" in caught.value.format_message()


def test_unknown_section_is_e204(tmp_path: Path) -> None:
    path = write_config(tmp_path, "\n[trian]\nepochs = 5\n")
    with pytest.raises(ConfigError, match="E204") as caught:
        load_config(path)
    message = caught.value.format_message()
    assert "[trian]" in message and str(path.resolve()) in message


def test_invalid_toml_is_e202(tmp_path: Path) -> None:
    path = write_config(tmp_path, "\n[train\nepochs = = 5\n")
    with pytest.raises(ConfigError, match="E202") as caught:
        load_config(path)
    assert str(path) in caught.value.format_message()


def test_missing_config_file_is_e108(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="E108"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("section", "line", "field"),
    [
        ("triage", "k = 0", "k"),
        ("train", "dropout = 1.5", "dropout"),
        ("evaluate", 'tune_split = "test"', "tune_split"),
        ("evaluate", 'threshold_mode = "x"', "threshold_mode"),
        ("evaluate", 'eval_split = "train"', "eval_split"),
        ("train", 'features = ["name", "popularity"]', "features"),
        ("train", "name_hidden = []", "name_hidden"),
        ("train", 'epochs = "many"', "epochs"),
        ("train", "epochs = 2.5", "epochs"),
        ("triage", 'oracle = "maybe"', "oracle"),
        ("encoder", "batch_tokens = 8", "batch_tokens"),
        ("encoder", 'precision = "fp8"', "precision"),
        # Values that cannot be converted must be refused with a code, never a traceback.
        ("train", 'name_hidden = ["wide"]', "name_hidden"),
        ("evaluate", 'fixed_thresholds = { en = "low" }', "fixed_thresholds"),
        # A NIL threshold meets the ranker's [-1, 1] score; the model folder would refuse others (issue 21 item 3).
        ("evaluate", "default_threshold = nan", "default_threshold"),
        ("evaluate", "fixed_thresholds = { en = 1.5 }", "fixed_thresholds"),
    ],
)
def test_bad_values_are_e203(tmp_path: Path, section: str, line: str, field: str) -> None:
    path = write_config(tmp_path, f"\n[{section}]\n{line}\n")
    with pytest.raises(ConfigError, match="E203") as caught:
        load_config(path)
    assert field in caught.value.format_message()


@pytest.mark.parametrize(
    ("text", "overrides", "where", "value"),
    [
        ("\n[train]\nepochs = 3\ndropout = 1.5\n", (), "run.toml:9 [train]", "dropout = 1.5"),
        ('\n[triage]\n  oracle   = "maybe"  # why not\n', (), "run.toml:8 [triage]", 'oracle = "maybe"'),
        (
            "\n[evaluate]\nfixed_thresholds = { en = 1.5 }\n",
            (),
            "run.toml:8 [evaluate]",
            "fixed_thresholds = {en = 1.5}",
        ),
        ("", ("train.dropout=1.5",), "--set [train]", "dropout = 1.5"),
        ("\n[train]\ndropout = 0.5\n", ("train.dropout=1.5",), "--set [train]", "dropout = 1.5"),
        ("", ("evaluate.nil_method=reader",), "--set [evaluate]", 'nil_method = "reader"'),
        ("\n[evaluate]\nnil_method = 'reader'\n", (), "run.toml:8 [evaluate]", 'nil_method = "reader"'),
    ],
    ids=["line", "indented-and-commented", "inline-table", "set", "set-over-file", "set-across", "across"],
)
def test_a_bad_setting_names_its_file_and_line_or_set_with_its_toml_spelling(
    tmp_path: Path, text: str, overrides: tuple[str, ...], where: str, value: str
) -> None:
    """A refused setting says where it was set, as the file's line or --set, and its value as TOML writes it
    (issue 21: `xel-cli rerank` said `[rerank]: enabled = False`, naming neither file nor line)."""
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError, match="E203") as caught:
        load_config(path, overrides)
    where = where.replace("run.toml", str(path.resolve()))
    assert caught.value.format_message().startswith(f"[E203] {where}: {value} is invalid: "), caught.value.message


def test_a_stage_s_refusal_of_a_setting_names_the_file_and_line_that_set_it(tmp_path: Path) -> None:
    """A check the stages run on the built config (rerank.enabled, a device this machine lacks) names only its
    section; `settings_located` says where the setting was set, or that it was left at its default."""
    from pipeline.core.config_file import settings_located

    def refused(config: RunConfig) -> str:
        with pytest.raises(ConfigError) as caught, settings_located(config.source, config.overrides):
            raise ConfigError("E203", where="[rerank]", field="enabled", value=config.rerank.enabled, reason="off")
        return caught.value.format_message()

    path = write_config(tmp_path, "\n[rerank]\n# the reader\nenabled = false\n")
    assert refused(load_config(path)).startswith(f"[E203] {path.resolve()}:9 [rerank]: enabled = false is invalid")
    assert refused(load_config(path, ("rerank.enabled=false",))).startswith("[E203] --set [rerank]: enabled = false is")
    assert refused(load_config(path, ("rerank.enabled=false",))).endswith("; change that --set on the command line")
    assert refused(load_config(path)).endswith("; change it in the config file or on the command line")
    unset = write_config(tmp_path)
    assert refused(load_config(unset)).startswith(
        f"[E203] {unset.resolve()} [rerank]: enabled = false (the default) is invalid"
    )
    dotted = write_config(tmp_path, base='name = "cfg"\nrerank.enabled = false\n' + BASE.split("\n", 1)[1])
    assert refused(load_config(dotted)).startswith(f"[E203] {dotted.resolve()}:2 [rerank]: enabled = false is invalid")
    with pytest.raises(ConfigError, match=r"^\[E203\] --device: device = \"x\" is"), settings_located(path):
        raise ConfigError("E203", where="--device", field="device", value="x", reason="no")  # not a setting's: as is


BOOLEAN = "must be true or false (a TOML boolean: no quotes, not yes/no or 1/0)"
WHOLE = "must be a whole number (a TOML integer such as 3, without quotes)"
NUMBER = "must be a number (such as 0.5 or 1, without quotes)"
TEXT = 'must be a string (in quotes in a TOML file, e.g. "cpu")'


@pytest.mark.parametrize(
    ("section", "key", "toml", "reason"),
    [
        ("rerank", "shuffle_slots", '"yes"', f"{BOOLEAN}, not a string"),
        ("rerank", "shuffle_slots", "1", f"{BOOLEAN}, not an integer"),
        ("inputs", "named_only", '"true"', f"{BOOLEAN}, not a string"),
        ("triage", "use_fuzzy", "0", f"{BOOLEAN}, not an integer"),
        ("evaluate", "popularity_rerank", "1.0", f"{BOOLEAN}, not a float"),
        ("train", "epochs", '"3"', f"{WHOLE}, not a string"),
        ("train", "epochs", "3.0", f"{WHOLE}, not a float"),
        ("triage", "k", "true", f"{WHOLE}, not a boolean"),
        ("train", "dropout", '"0.5"', f"{NUMBER}, not a string"),
        ("train", "learning_rate", "true", f"{NUMBER}, not a boolean"),
        ("encoder", "name", "3", f"{TEXT}, not an integer"),
        ("triage", "dense_prefix", "false", f"{TEXT}, not a boolean"),
        ("inputs", "docs", "3", 'must be a path (a string in quotes, e.g. "data/kb.jsonl"), not an integer'),
        (
            "train",
            "final_hidden",
            "[512, 2.5]",
            "must be a list of whole numbers, e.g. [512, 256]; its item 2 is a float",
        ),
        (
            "train",
            "final_hidden",
            '["512"]',
            "must be a list of whole numbers, e.g. [512, 256]; its item 1 is a string",
        ),
        ("train", "features", '"name"', 'must be a list of strings, e.g. ["en", "es"], not a string'),
        (
            "evaluate",
            "languages",
            '["en", 1]',
            'must be a list of strings, e.g. ["en", "es"]; its item 2 is an integer',
        ),
        (
            "evaluate",
            "fixed_thresholds",
            '{en = "-0.8"}',
            "must be a table of numbers, e.g. {en = -0.8}; its 'en' is a",
        ),
    ],
)
def test_every_setting_is_strictly_typed_in_the_file_and_on_the_command_line(
    tmp_path: Path, section: str, key: str, toml: str, reason: str
) -> None:
    """A value of the wrong type is E203 naming where it was set, the key, the value and the type expected
    (issue 21: `rerank.shuffle_slots = "yes"` and `1` were read as true, `epochs = 3.0` as 3, `"0.5"` as
    0.5): in the file with its line, and with --set, whose text is read as TOML (`yes` stays a string)."""
    text, line = (f"{key} = {toml}\n", 6) if section == "inputs" else (f"\n[{section}]\n{key} = {toml}\n", 8)
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError, match="E203") as caught:
        load_config(path)
    message = caught.value.format_message()
    assert message.startswith(f"[E203] {path.resolve()}:{line} [{section}]: {key} = "), message
    assert f"is invalid: {reason}" in message, message
    if key in ("name", "dense_prefix", "docs", "features"):
        return  # --set gives a text or path setting its text as it is, and `"name"` is the list ["name"]
    set_value = "yes" if toml == '"yes"' else toml
    with pytest.raises(ConfigError, match="E203") as caught:
        load_config(write_config(tmp_path), (f"{section}.{key}={set_value}",))
    message = caught.value.format_message()
    assert message.startswith(f"[E203] --set [{section}]: {key} = "), message
    assert f"is invalid: {reason}" in message, message


def test_typed_values_as_toml_writes_them_are_accepted(tmp_path: Path) -> None:
    """What is the right type loads: TOML booleans (also `--set key=true`, text that reads as TOML), an
    integer for a number setting, lists for list settings (`--set` also comma-separated, numbers read)."""
    text = "\n[rerank]\nshuffle_slots = false\n[train]\ndropout = 0\nfinal_hidden = [64, 32]\n"
    config = load_config(write_config(tmp_path, text))
    assert config.rerank.shuffle_slots is False and config.train.dropout == 0.0
    assert isinstance(config.train.dropout, float) and config.train.final_hidden == (64, 32)
    config = load_config(
        write_config(tmp_path),
        ("rerank.shuffle_slots=false", "inputs.named_only=true", "train.margin=2", "train.final_hidden=64,32"),
    )
    assert (config.rerank.shuffle_slots, config.inputs.named_only) == (False, True)
    assert config.train.margin == 2.0 and isinstance(config.train.margin, float)
    assert config.train.final_hidden == (64, 32)
    assert load_config(write_config(tmp_path), ("triage.dense_prefix=3",)).triage.dense_prefix == "3"


def test_inputs_need_a_kb(tmp_path: Path) -> None:
    path = write_config(tmp_path, base='name = "cfg"\n[inputs]\nmentions = "m.jsonl"\n')
    with pytest.raises(ConfigError, match="E203") as caught:
        load_config(path)
    assert "kb" in caught.value.format_message()


def test_set_override_applies(tmp_path: Path) -> None:
    path = write_config(tmp_path, "\n[train]\nepochs = 40\n")
    config = load_config(
        path, ("train.epochs=3", "triage.oracle=true", "train.final_hidden=32,16", "evaluate.threshold_mode=fixed")
    )
    assert config.train.epochs == 3
    assert config.triage.oracle is True
    assert config.train.final_hidden == (32, 16)
    assert config.evaluate.threshold_mode == "fixed"


def test_set_override_reads_a_quoted_string_as_toml_does(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    config = load_config(path, ('evaluate.nil_method="threshold"', "encoder.device='cpu'", "train.device=cpu"))
    assert (config.evaluate.nil_method, config.encoder.device, config.train.device) == ("threshold", "cpu", "cpu")


def test_set_override_of_run_dir(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    config = load_config(write_config(tmp_path), (f"run.run_dir={target}",))
    assert config.run_dir == target


@pytest.mark.parametrize(
    ("override", "code"),
    [
        ("train.epochs", "E203"),  # no '='
        ("epochs=3", "E203"),  # no section
        ("train.epochs=three", "E203"),  # not an int
        ("train.name_hidden=16,x", "E203"),  # not a list of ints
        ("triage.oracle=maybe", "E203"),  # not a bool
        ("train.epochz=3", "E201"),  # unknown key
        ("trian.epochs=3", "E204"),  # unknown section
    ],
)
def test_malformed_override_is_refused(tmp_path: Path, override: str, code: str) -> None:
    with pytest.raises(ConfigError, match=code) as caught:
        load_config(write_config(tmp_path), (override,))
    assert "--set" in caught.value.format_message()


def test_out_of_range_override_is_e203(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="E203") as caught:
        load_config(write_config(tmp_path), ("train.dropout=2",))
    assert "dropout" in caught.value.format_message()


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ("encoder.max_name_tokens=100000", "must be between 4 and 8192"),
        ("encoder.chunk_texts=3000000000", "must be between 1 and 2147483647"),
        ("triage.dense_k=5000", "must be between 1 and 1000"),
        ("inputs.context_chars=1000000000000000", "must be between 50 and 2147483647"),
        ("train.seed=100000000000000000000", "must be at most 9223372036854775807"),
        ("train.final_hidden=[512,100000000000000000000]", "must be at most 9223372036854775807"),
    ],
)
def test_a_count_past_what_the_libraries_hold_is_e203(tmp_path: Path, override: str, reason: str) -> None:
    """Break-test D: max_name_tokens 10**30 crashed the tokenizer with an OverflowError after encoding began."""
    with pytest.raises(ConfigError, match="E203") as caught:
        load_config(write_config(tmp_path), (override,))
    assert reason in caught.value.format_message(), caught.value.format_message()


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    path = write_config(
        folder,
        base='name = "cfg"\nrun_dir = "../runs/one"\n' + BASE.split("\n", 1)[1] + 'docs = "../shared/docs.jsonl"\n',
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    config = load_config(path)
    assert config.inputs.mentions == (folder / "data" / "mentions.jsonl").resolve()
    assert config.inputs.kb == (folder / "data" / "kb.jsonl").resolve()
    assert config.inputs.docs == (tmp_path / "shared" / "docs.jsonl").resolve()
    assert config.run_dir == (tmp_path / "runs" / "one").resolve()
    assert config.source == path.resolve()


def test_default_run_dir_is_under_root_by_name(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path), root=tmp_path / "artifacts")
    assert config.run_dir == (tmp_path / "artifacts" / "cfg").resolve()


def test_bom_in_config_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    assert load_config(path).name == "cfg"


def test_relative_run_dir_from_set_is_against_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(write_config(tmp_path), ("run.run_dir=runs/one",))
    assert config.run_dir == (elsewhere / "runs" / "one").resolve()


@pytest.mark.parametrize("section", ["encoder", "train"])
@pytest.mark.parametrize("device", ["cuda:x", "CPU", "gpu", "", "cuda:", "xla", "cpu:0"])
def test_a_device_setting_torch_cannot_parse_is_e203_naming_its_section(section: str, device: str) -> None:
    from pipeline.core.config import EncoderConfig, TrainConfig

    config_class = {"encoder": EncoderConfig, "train": TrainConfig}[section]
    with pytest.raises(ConfigError, match=rf'\[E203\] \[{section}\]: device = "{device}"'):
        config_class(device=device)


def test_a_device_this_machine_lacks_is_e203_when_used(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from pipeline.core.config import TrainConfig
    from pipeline.core.devices import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert TrainConfig(device="cuda:1").device == "cuda:1"  # well formed: checked where it is used
    with pytest.raises(ConfigError, match=r'\[E203\] \[train\]: device = "cuda:1" .*no CUDA device is visible here'):
        pick_device("cuda:1", "[train]")
    assert pick_device("auto", "[train]").type == "cpu"
