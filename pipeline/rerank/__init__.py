"""The rerank stage (beyond the paper): fine-tune the reader on the ranker's top candidates; see docs/reader.md."""


def __getattr__(name: str):
    # `pipeline.rerank.run` without importing torch and transformers for every submodule.
    if name == "run":
        from pipeline.rerank.stage import run

        return run
    raise AttributeError(name)
