"""Stage 4 (paper §4): scores, NIL decisions, TAC output and measures."""


def __getattr__(name: str):
    # `pipeline.evaluate.run` without importing torch and the stage's other modules for every submodule
    # (`pipeline.evaluate.<module>` alone stays light).
    if name == "run":
        from pipeline.evaluate.stage import run

        return run
    raise AttributeError(name)
