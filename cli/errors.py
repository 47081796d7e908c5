"""Expected failures end as one line and exit code 1 (usage errors are click's: exit code 2);
anything else is a bug, and its traceback shows."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer

from cli.output import err
from infra.processes import StackError

F_ = TypeVar("F_", bound=Callable[..., Any])


def friendly_errors(func: F_) -> F_:
    """Turn the errors a user can act on into one clear line and exit code 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as e:
            known = one_line(e)
            if known is None:
                raise
            code, line = known
            err.print(line)
            raise typer.Exit(code) from None

    return wrapper  # type: ignore[return-value]


def _raised_by(e: Exception, module: str, *names: str) -> bool:
    """Whether ``e`` is one of the classes ``names`` of ``module``; a module never imported
    cannot have raised anything, and is not imported just to find out."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(e, tuple(getattr(loaded, n) for n in names))


def one_line(e: Exception) -> tuple[int, str] | None:
    """(exit code, message) for an expected failure; None for a bug (its traceback shows)."""
    if _raised_by(e, "expectations.validation", "ValidationFailed"):
        return 1, f"[red]validation failed, main unchanged:[/red] {e}"
    if (
        isinstance(e, (StackError, ValueError))  # PrefectUnavailable is a StackError
        or _raised_by(e, "infra.session", "ConnectError")
        or _raised_by(e, "infra.artifacts", "ArtifactError")
        or _raised_by(e, "ingest", "SchemaError")
        or _raised_by(e, "flows.writers", "WriterBusy")
    ):
        return 1, f"[red]error:[/red] {e}"
    session = sys.modules.get("infra.session")
    if session is not None and session.server_gone(e):
        return 1, (
            "[red]error:[/red] the Spark Connect server went away during the command (it "
            "refuses connections): start it again (`ohlcv stack up` for the local one), then "
            "run the same command again (nothing unvalidated was published; a backfill resumes)"
        )
    if _raised_by(e, "pyspark.errors", "PySparkException"):
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return 1, f"[red]Spark error:[/red] {first}"
    if isinstance(e, OSError):
        return 1, f"[red]error:[/red] {os_error(e)}"
    return None


def os_error(e: OSError) -> str:
    """One line for a failure of the machine (disk, permissions, a damaged file)."""
    where = f" ({e.filename})" if e.filename else ""
    if e.errno == errno.ENOSPC:
        return (
            f"no space left on device{where}: free some space, then run the same command "
            "again (ingestion and candle runs are safe to repeat)"
        )
    if isinstance(e, PermissionError):
        return f"permission denied{where}: give this user access, or point OHLCV_DATA_DIR elsewhere"
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"{first}{where if e.filename and str(e.filename) not in first else ''}"
