"""Stage 2 (paper §3.1): mention, context, entity name and description vectors into vectors.h5."""


def __getattr__(name: str):
    # `pipeline.encode.run` without importing torch and the stage's other modules for every submodule
    # (`pipeline.encode.<module>` alone stays light).
    if name == "run":
        from pipeline.encode.stage import run

        return run
    raise AttributeError(name)
