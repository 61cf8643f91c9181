"""How a command reports an error about its input (a bad shard, a missing file, a pipeline that
fails): one line on stderr, `error: ...` naming the file, and an exit code; never a traceback.
The trainer and the benchmark commands share it."""

from __future__ import annotations

from pipeline.shards import PipelineError, ShardError

INPUT_ERRORS = (ShardError, PipelineError, OSError)


def error_line(e: Exception) -> str:
    """The one line `e` is reported with: an OSError with a file (disk full, read-only output,
    no such folder) names it; anything else is its message."""
    if isinstance(e, OSError) and e.filename:
        return f"error: {e.filename}: {e.strerror}"
    return f"error: {e}"


def exit_code(e: Exception) -> int:
    """1 for a pipeline failure that is not about the data, 2 for the data or a file."""
    return 1 if isinstance(e, PipelineError) else 2
