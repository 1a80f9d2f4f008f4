"""Stage 3 (paper §3.2-3.3): the neural ranker trained with the hinge loss, single process or DDP."""


def __getattr__(name: str):
    # `pipeline.train.run` without importing torch and the stage's other modules for every submodule
    # (`pipeline.train.<module>` alone stays light).
    if name == "run":
        from pipeline.train.stage import run

        return run
    raise AttributeError(name)
