"""xel-cli: the command line of the xel pipeline.

Only parses options, builds the run config and calls each stage's `run`; all work
happens in `pipeline/`. User-facing failures are `PipelineError`s: one line, exit 2,
a traceback only with --debug.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import click

from pipeline.core.errors import PipelineError, os_error, usage_error
from pipeline.core.lock import run_lock

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.toml"
# `xel-cli --help` lists commands in this order: a run, its stages, then using and studying a model.
COMMAND_ORDER = (
    "run",
    "triage",
    "encode",
    "train",
    "rerank",
    "evaluate",
    "link",
    "export",
    "score",
    "search",
    "experiment",
)


def _renamed(old: str, new: str, dest: str, **attributes):
    """A hidden option keeping the old spelling `old` of `new` for one release (into `dest`); the
    command merges it with `_either`."""
    return click.option(old, dest, hidden=True, default=None, help=f"Old spelling of {new}.", **attributes)


def _either(new, old, default=None):
    """The value given by the new or the old spelling of a renamed option (the new one wins), else `default`."""
    return new if new is not None else old if old is not None else default


@dataclass
class State:
    debug: bool = False
    quiet: bool = False  # no summaries on stdout: only warnings and errors (stderr), and `score`'s result


pass_state = click.make_pass_decorator(State, ensure=True)


def _setup_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    for noisy in ("transformers", "httpx", "filelock", "urllib3", "matplotlib", "h5py", "faiss"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


# click >= 8.2 raises these; on 8.1 (no such classes) help without a command exits 0 and an unknown command keeps click's form.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())
_NO_SUCH_COMMAND = getattr(click.exceptions, "NoSuchCommand", ())


# What an interrupted command keeps (every write is atomic, so nothing is left half-written) and
# how it resumes: said in one line on Ctrl-C, exit code 130 (128 + SIGINT, as shells report it).
INTERRUPTED_KEEPS = {
    "triage": "triage keeps nothing of this attempt (its tables are written whole or not at all)",
    "encode": "encode keeps its finished chunks",
    "train": "train keeps its last checkpoint (train.checkpoint_every epochs, or train.checkpoint_minutes)",
    "rerank": "rerank keeps its last checkpoint (one after every epoch of the reader's training)",
    "evaluate": "evaluate keeps nothing of this attempt; the stages before it are finished",
    "run": "finished stages are kept, with encode's finished chunks and the last checkpoints of train and "
    "rerank (the reader's training, after every epoch)",
    "search": "finished trials are kept",
    "experiment": "finished sub-runs are kept",
    "link": "link keeps its finished chunks in --out",
}
INTERRUPTED_EXIT = 130


class XelGroup(click.Group):
    """Turns a PipelineError, and click's own usage errors (`errors.usage_error`: E206/E207), into one
    line and exit code 2 unless --debug is on; Ctrl-C into one line saying what was kept and how to
    resume, exit code 130. Help, and `xel-cli` without a command, stay click's."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:
            context = super().make_context(info_name, args, parent=parent, **extra)
        except _NO_ARGS_IS_HELP:
            raise
        except click.UsageError as error:  # of the global options (`xel-cli --bogus`): click shows it as one line
            raise usage_error(error) from None
        context.meta["xel.args"] = list(args)  # the command line, for the resume advice on Ctrl-C
        return context

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as error:
            if error.ctx is ctx and not isinstance(error, _NO_SUCH_COMMAND):
                raise  # "Missing command." (global options, no command): click's usage block says what there is
            self._show(ctx, usage_error(error, " ".join(filter(None, (ctx.command_path, ctx.invoked_subcommand)))))
        except PipelineError as error:
            self._show(ctx, error)
        except OSError as error:  # what no stage coded: a path the system refuses (permissions, a file for a folder)
            self._show(ctx, os_error(error))
        except KeyboardInterrupt:
            self._interrupted(ctx)

    @staticmethod
    def _interrupted(ctx: click.Context) -> None:
        """One line on Ctrl-C: what the command keeps (`INTERRUPTED_KEEPS`) and the command that resumes it."""
        import shlex

        state = ctx.find_object(State)
        if state is not None and state.debug:
            click.echo(traceback.format_exc(), err=True, nl=False)
        kept = INTERRUPTED_KEEPS.get(ctx.invoked_subcommand or "", "nothing half-written is left")
        args = ctx.meta.get("xel.args", [])
        # --force deletes what was kept (finished chunks, checkpoints): the command that resumes is without it.
        again = shlex.join(["xel-cli", *(arg for arg in args if arg != "--force")])
        dropped = " (without --force, which would start over)" if "--force" in args else ""
        click.echo(f"Interrupted: {kept}; run `{again}` again to resume{dropped}.", err=True)
        ctx.exit(INTERRUPTED_EXIT)

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Commands in pipeline order (the run, its stages, then applying and studying models), not alphabetical."""
        known = super().list_commands(ctx)
        return [name for name in COMMAND_ORDER if name in known] + [name for name in known if name not in COMMAND_ORDER]

    @staticmethod
    def _show(ctx: click.Context, error: PipelineError) -> None:
        state = ctx.find_object(State)
        if state is not None and state.debug:
            # Re-raising would not show it: click's main() turns any ClickException into one line.
            click.echo(traceback.format_exc(), err=True, nl=False)
        click.echo(f"Error: {error.format_message()}", err=True)
        ctx.exit(error.exit_code)


@click.group(cls=XelGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
@click.option(
    "--quiet", "-q", is_flag=True, help="Only warnings and errors (no summaries; `score` still prints its scores)."
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="CPU threads of the encoder and other numeric work (default: OMP_NUM_THREADS if set, else the "
    "CPUs this process may use: its affinity and cgroup quota). The ranker always uses one.",
)
@click.version_option(package_name="xel")
@click.pass_context
def main(ctx: click.Context, debug: bool, quiet: bool, threads: int | None) -> None:
    """Cross-language entity linking: triage -> encode -> train -> rerank -> evaluate (rerank only with
    rerank.enabled = true), each cached on disk."""
    from pipeline.core.threads import apply_threads, choose_threads

    _setup_logging(debug, quiet)
    ctx.obj = State(debug=debug, quiet=quiet)
    count, source = choose_threads(threads)
    apply_threads(count)
    logging.getLogger("xel").debug("%d CPU thread(s) (%s)", count, source)


def config_options(function=None, *, force: bool = True):
    """Options shared by every stage command (`@config_options(force=False)`: without --force)."""
    if function is None:
        return lambda decorated: config_options(decorated, force=force)
    function = click.option(
        "--config",
        "config_path",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="The run's TOML config (required; configs/demo.toml is the built-in demo).",
    )(function)
    function = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help="Override a config value, e.g. --set train.epochs=50 (repeatable).",
    )(function)
    function = click.option(
        "--run-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Run folder (default: the config's run_dir, else artifacts/<name> beside the config file).",
    )(function)
    if force:
        function = click.option("--force", is_flag=True, help="Redo the stage even if it is up to date.")(function)
    return function


def _load(config_path: Path | None, overrides: tuple[str, ...], run_dir: Path | None):
    from pipeline.core.config_file import load_config
    from pipeline.core.errors import ConfigError

    if config_path is None:
        # Running the demo unasked (minutes, in the working folder) surprised users: say so instead.
        raise ConfigError("E205", demo=DEMO_CONFIG)
    if run_dir is not None:
        overrides = (*overrides, f"run.run_dir={run_dir.resolve()}")
    return load_config(config_path, overrides)


@contextlib.contextmanager
def _holding(config, command: str, lock: bool = True, writer: bool = True):
    """Take the run folder's lock (unless told not to), then save the effective config in it.

    The config is written only once the lock is held, so a refused second run overwrites
    nothing of the run in progress. Under torchrun only rank 0 is the `writer`: the other
    ranks take no lock and write nothing here. A stage's refusal of a setting names the config
    file and line that set it, or --set (`config_file.settings_located`).
    """
    from pipeline.core.config import to_dict
    from pipeline.core.config_file import settings_located
    from pipeline.core.io import remove_leftover_temps, write_json_atomic, write_text_atomic

    if not writer:
        with settings_located(config.source, config.overrides):
            yield
        return
    with run_lock(config.run_dir, command) if lock else contextlib.nullcontext():
        config.run_dir.mkdir(parents=True, exist_ok=True)
        if lock:
            remove_leftover_temps(config.run_dir)  # e.g. of config.json, by a run that was killed
        saved = config.run_dir / "config.json"
        previous = saved.read_text(encoding="utf-8") if saved.is_file() else None
        write_json_atomic(saved, to_dict(config))
        try:
            with settings_located(config.source, config.overrides):  # a stage's check of a setting: file and line
                yield
        except PipelineError:  # refused or failed: the run's config.json stays the last finished command's
            if previous is not None:
                write_text_atomic(saved, previous)
            raise


def _say(*lines: str) -> None:
    """Print what a command did, on stdout, unless --quiet: then only warnings and errors show (stderr)."""
    state = click.get_current_context().find_object(State)
    if state is None or not state.quiet:
        click.echo("\n".join(lines))


def _echo_result(result) -> None:
    from pipeline.scoring.summary import stage_summary

    _say(*stage_summary(result))


def _stage_command(stage: str, help_text: str):
    @main.command(name=stage, help=help_text)
    @config_options
    def command(config_path: Path, overrides: tuple[str, ...], run_dir: Path | None, force: bool) -> None:
        from pipeline.stages import run_stage

        config = _load(config_path, overrides, run_dir)
        with _holding(config, stage):
            _echo_result(run_stage(stage, config, force=force))

    return command


def _shard(shard_text: str | None, merge: bool) -> tuple[int, int] | None:
    """The (i, n) of `--shard I/N` (E203 if malformed), else of a Slurm array task; None with --merge (E206 with both)."""
    import os

    from pipeline.encode.shards import parse_shard, shard_from_environment

    if merge and shard_text is not None:
        raise click.BadOptionUsage(
            "--merge", "--shard and --merge exclude each other: run the shards first, then --merge once"
        )
    if merge:
        return None
    return parse_shard(shard_text) if shard_text is not None else shard_from_environment(os.environ)


_stage_command("triage", "Read mentions and KB, write normalised tables and top-k candidates with recall.")


@main.command()
@config_options
@click.option(
    "--shard",
    "shard_text",
    metavar="I/N",
    default=None,
    help="Encode only slice I of N (I counts from 0) into encode/shards/; "
    "default in a Slurm array job: SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN / SLURM_ARRAY_TASK_COUNT.",
)
@click.option("--merge", is_flag=True, help="Join the N finished shards into vectors.h5 and finish the stage.")
def encode(
    config_path: Path,
    overrides: tuple[str, ...],
    run_dir: Path | None,
    force: bool,
    shard_text: str | None,
    merge: bool,
) -> None:
    """Encode mentions and candidate entities with the multilingual encoder into vectors.h5."""
    from pipeline.stages import run_stage

    shard = _shard(shard_text, merge)
    config = _load(config_path, overrides, run_dir)
    # Shards of one run write separate files at the same time, so they take no run lock.
    with _holding(config, "encode", lock=shard is None):
        _echo_result(run_stage("encode", config, force=force, shard=shard, merge=merge))


def _training_stage_command(stage: str, help_text: str):
    """A stage every rank runs under torchrun (data-parallel training): rank 0 alone takes the lock,
    writes the config and prints; alone, it is rank 0."""

    @main.command(name=stage, help=help_text)
    @config_options
    def command(config_path: Path, overrides: tuple[str, ...], run_dir: Path | None, force: bool) -> None:
        from pipeline.core import distributed
        from pipeline.stages import run_stage

        world = distributed.world_from_environment()
        config = _load(config_path, overrides, run_dir)
        with _holding(config, stage, writer=world.is_main):
            result = run_stage(stage, config, force=force)
        if world.is_main:
            _echo_result(result)

    return command


_training_stage_command(
    "train", "Train the ranker on the cached vectors (checkpoints, resumable); data-parallel under torchrun."
)
_training_stage_command(
    "rerank",
    "Fine-tune the reader (needs rerank.enabled = true; docs/reader.md) and score dev and test "
    "with it; checkpoints, resumable; data-parallel under torchrun.",
)


_stage_command("evaluate", "Score candidates, tune NIL thresholds on dev, write TAC output and scores.")


@main.command()
@config_options
def run(config_path: Path, overrides: tuple[str, ...], run_dir: Path | None, force: bool) -> None:
    """Run the stages in order (rerank only with rerank.enabled = true); each skips when it is up to date."""
    from pipeline.core import distributed
    from pipeline.core.config_file import settings_located
    from pipeline.stages import STAGES, TRAINING_STAGES, check_settings, run_stage

    world = distributed.world_from_environment()
    config = _load(config_path, overrides, run_dir)
    started = time.time()
    if world.is_main:
        _say(f"run: {config.run_dir} (config {config_path})")
    # Under torchrun every rank trains; rank 0 alone runs the other stages while the rest wait.
    with settings_located(config.source, config.overrides):  # a refused setting names its file and line
        check_settings(config, tuple(s for s in STAGES if s != "rerank" or config.rerank.enabled))
    with _holding(config, "run", writer=world.is_main), distributed.process_group(world, config.train.device):
        for stage in STAGES:
            if stage == "rerank" and not config.rerank.enabled:
                continue
            if stage == "train":
                distributed.wait_for_main(world)
            elif stage not in TRAINING_STAGES and not world.is_main:
                continue
            # Each stage has just brought the ones before it up to date: nothing upstream to check.
            result = run_stage(stage, config, check_upstream=False, force=force)
            if world.is_main:
                _echo_result(result)
    if world.is_main:
        _say(f"run: finished in {time.time() - started:.1f}s -> {config.run_dir}")


@main.command()
@config_options(force=False)
@click.option(
    "--trials",
    type=click.IntRange(1, 1000),
    default=10,
    show_default=True,
    help="Number of random settings to try (trial i is the same whatever the number).",
)
@click.option(
    "--seed",
    "search_seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the draws; each seed has its own trials under <run>/search/seed-<S>/.",
)
def search(config_path: Path, overrides: tuple[str, ...], run_dir: Path | None, trials: int, search_seed: int) -> None:
    """Random search over the paper's Appendix A ranker settings; ranks trials on dev, writes best.toml.

    Triage and encode run once in the run folder; each trial trains and evaluates in its own
    sub-run, and finished trials are not redone (delete a trial's folder to redo it).
    """
    from pipeline.studies import search as search_stage

    config = _load(config_path, overrides, run_dir)
    with _holding(config, "search"):
        result = search_stage.run(config, search_stage.SearchConfig(trials=trials, seed=search_seed))
    _say(
        f"search: {result.counts['trials']} trial(s), {result.counts['trained']} trained now, "
        f"{result.seconds:.1f}s -> {result.out_dir}",
        (result.out_dir / "search.md").read_text(encoding="utf-8"),
        f"search: best trial {result.summary['best_trial']}; its config: {result.out_dir / 'best.toml'}",
    )


@main.command()
@config_options(force=False)
@click.option(
    "--seed-count",
    type=click.IntRange(1, 100),
    default=None,
    help="Training seeds per cell: the config's seed, +1, +2, ... [default: 3]",
)
@_renamed("--seeds", "--seed-count", "old_seed_count", type=click.IntRange(1, 100))
@click.option(
    "--languages",
    default=None,
    metavar="L1,L2,...",
    help="Languages of the tables (default: every language with training mentions).",
)
@click.option("--ablation-language", default="en", show_default=True, help="Training language of Table 3.")
@click.option(
    "--triage-row/--no-triage-row",
    default=True,
    show_default=True,
    help="Add Table 3's '+ triage' row (our triage-evidence feature, not the paper's).",
)
@click.option(
    "--reader-row/--no-reader-row",
    default=None,
    help="Add Table 4: the Multi ranker alone and with the reader ([rerank] settings; one reader per seed). "
    "[default: on when rerank.enabled = true]",
)
@click.option(
    "--only",
    multiple=True,
    metavar="TABLE[:COLUMN]",
    help="Fill only these cells, e.g. 1:Multi (the Multi setting's seed spread) or 2 (repeatable).",
)
def experiment(
    config_path: Path,
    overrides: tuple[str, ...],
    run_dir: Path | None,
    seed_count: int | None,
    old_seed_count: int | None,
    languages: str | None,
    ablation_language: str,
    triage_row: bool,
    reader_row: bool | None,
    only: tuple[str, ...],
) -> None:
    """The paper's Tables 1-3 (settings, zero-shot, feature ablations) averaged over seeds; Table 4, the reader.

    Triage and encode run once; each model trains once in a sub-run under <run>/experiment/
    and finished ones are not redone, so a stopped experiment resumes (delete a sub-run's
    folder to redo it). Writes <run>/experiment/tables.md (mean ± std, missing cells
    marked) and cells.parquet.
    """
    from pipeline.studies import experiment as experiment_stage

    table_languages = experiment_stage.parse_languages(languages)
    config = _load(config_path, overrides, run_dir)
    settings = experiment_stage.ExperimentConfig(
        seeds=_either(seed_count, old_seed_count, 3),
        languages=table_languages,
        ablation_language=ablation_language,
        triage_row=triage_row,
        reader_row=config.rerank.enabled if reader_row is None else reader_row,
        only=experiment_stage.parse_only(only),
    )
    with _holding(config, "experiment"):
        result = experiment_stage.run(config, settings)
    _say(
        f"experiment: {result.counts['sub_runs']} sub-run(s), {result.counts['trained']} trained now, "
        f"{result.seconds:.1f}s -> {result.out_dir}",
        result.summary["tables"].read_text(encoding="utf-8"),
    )


@main.command()
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="A trained linker: <run>/model/ or a folder written by `xel-cli export`.",
)
@click.option(
    "--mentions",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Mentions to link: JSONL or Parquet (JSONL fields), or a TAC KBP 2015 .tab file (then --docs is its source folder).",
)
@click.option(
    "--docs",
    type=click.Path(path_type=Path),
    default=None,
    help="Docs JSONL for mentions given by doc_start/doc_end; for a .tab file, the folder of source documents.",
)
@click.option(
    "--kb",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="KB JSONL to link against (default: the model's); any KB: alias-table ids it lacks are left out "
    "(W710, docs/any-kb.md); only entities not cached before are encoded.",
)
@click.option(
    "--kb-map",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Map of the model's KB ids to this KB's, one pair a line: OLD<TAB>NEW (.tsv) or "
    '{"from": OLD, "to": NEW} (.jsonl); ids it does not name stay as they are.',
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder: links.parquet, links.jsonl, system.tab (+ metrics.json with --score).",
)
@click.option(
    "--shard",
    "shard_text",
    metavar="I/N",
    default=None,
    help="Link only chunks I, I+N, I+2N, ... (I from 0); default in a Slurm array job: "
    "SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN / SLURM_ARRAY_TASK_COUNT. Then run --merge once.",
)
@click.option("--merge", is_flag=True, help="Join the N finished shards and write the outputs.")
@click.option(
    "--score",
    "score_links",
    is_flag=True,
    help="Score mentions that carry gold_kb_id as evaluate does (writes gold.tab and metrics.json); gold is ignored otherwise.",
)
@click.option(
    "--chunk-mentions",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Mentions per chunk: memory grows with it, a kill loses at most one chunk.",
)
@click.option(
    "--device", default=None, help="Device of the encoder and ranker (cpu, cuda, cuda:N; default: the model's setting)."
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16", "int8"]),
    default=None,
    help="Precision of the encoder (int8: CPU only; default: the model's setting; see docs/performance.md).",
)
@click.option("--force", is_flag=True, help="Start over, dropping finished chunks and outputs.")
@click.option(
    "--fallback-threshold",
    type=float,
    default=None,
    help="NIL threshold of languages the model has none for (default: the median of its per-language thresholds).",
)
@click.option(
    "--ignore-entity-type",
    is_flag=True,
    help="Ignore the mentions' entity_type (a TAC .tab's type column too), which the ranker otherwise reads "
    "as the mention's type (docs/inputs.md).",
)
@click.option(
    "--rename-duplicate-ids",
    is_flag=True,
    help="Link a mention whose id repeats an earlier one's as id#start-end (W101) instead of refusing the file (E104).",
)
@click.option(
    "--drop-duplicate-spans",
    is_flag=True,
    help="Keep the first mention of a span given twice and drop the others (W108) instead of refusing the file (E115).",
)
def link(
    model_dir: Path,
    mentions: Path,
    docs: Path | None,
    kb: Path | None,
    out_dir: Path,
    shard_text: str | None,
    merge: bool,
    score_links: bool,
    chunk_mentions: int,
    device: str | None,
    precision: str | None,
    force: bool,
    fallback_threshold: float | None,
    ignore_entity_type: bool,
    rename_duplicate_ids: bool,
    drop_duplicate_spans: bool,
    kb_map: Path | None,
) -> None:
    """Link a new corpus with a trained linker, in chunks that resume when killed, shard and merge."""
    from pipeline.link.out_folder import out_folder
    from pipeline.link.repeats import Repeats
    from pipeline.link.run import LinkOptions
    from pipeline.link.run import run as run_link
    from pipeline.link.summary import link_summary

    shard = _shard(shard_text, merge)
    options = LinkOptions(
        model=model_dir,
        mentions=mentions,
        out_dir=out_dir,
        docs=docs,
        kb=kb,
        shard=shard,
        merge=merge,
        score=score_links,
        chunk_mentions=chunk_mentions,
        device=device,
        precision=precision,
        force=force,
        fallback_threshold=fallback_threshold,
        ignore_entity_type=ignore_entity_type,
        repeats=Repeats(rename_ids=rename_duplicate_ids, drop_spans=drop_duplicate_spans),
        kb_map=kb_map,
    )
    # Shards of one corpus write separate chunk files at once, so they take no lock (as encode's).
    with out_folder(out_dir, locked=shard is None):
        result = run_link(options)
    _say(*link_summary(result, shard))


@main.command()
@click.option(
    "--run-dir",
    "run_dir_option",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="The run whose trained linker (<run>/model/, checked first) is copied.",
)
@click.option(
    "--out",
    "out_option",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="A new or empty folder to copy it to.",
)
# The old positional form `export RUN_DIR OUT_DIR`, kept for one release.
@click.argument(
    "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=False, metavar="RUN_DIR"
)
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path), required=False, metavar="OUT_DIR")
def export(run_dir_option: Path | None, out_option: Path | None, run_dir: Path | None, out_dir: Path | None) -> None:
    """Copy a run's trained linker to a folder of its own: xel-cli export --run-dir RUN --out DIR."""
    from pipeline.model.model_folder import export_model

    run_dir, out_dir = _either(run_dir_option, run_dir), _either(out_option, out_dir)
    for value, name in ((run_dir, "--run-dir"), (out_dir, "--out")):
        if value is None:
            raise click.MissingParameter(param_hint=f"'{name}'", param_type="option")
    _say(f"export: {export_model(run_dir, out_dir)}")


@main.command()
@click.argument("gold", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("system", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--lenient", is_flag=True, help="Allow different mention sets and count them as neleval does.")
@click.option(
    "--doc-languages",
    "languages_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="doc_id<TAB>lang file (header line `doc_id<TAB>lang`) giving each document's "
    "language; default: doc_languages.tsv beside GOLD, which evaluate writes.",
)
@_renamed(
    "--languages", "--doc-languages", "old_languages_path", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def score(
    gold: Path, system: Path, as_json: bool, lenient: bool, languages_path: Path | None, old_languages_path: Path | None
) -> None:
    """Score a TAC KBP 2015 EDL system file against a gold file (neleval's measures)."""
    languages_path = _either(languages_path, old_languages_path)
    from pipeline.scoring.measures import score_files
    from pipeline.scoring.table import format_table

    report = score_files(gold, system, strict=not lenient, languages_path=languages_path)
    click.echo(json.dumps(report, indent=2) if as_json else format_table(report))


if __name__ == "__main__":
    main()
