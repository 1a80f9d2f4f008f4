"""Stage 1: candidates per mention from priors, KB names, fuzzy and dense name matching."""


def __getattr__(name: str):
    # `pipeline.triage.run` without importing torch and the stage's other modules for every submodule
    # (`pipeline.triage.<module>` alone stays light).
    if name == "run":
        from pipeline.triage.stage import run

        return run
    raise AttributeError(name)
