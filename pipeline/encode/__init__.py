"""Stage 2 (paper §3.1): mention, context, entity name and description vectors into vectors.h5."""

from pipeline.encode.stage import run

__all__ = ["run"]
