"""The landing zone's settings, a part of :class:`settings.Settings` (kept here so the settings
module stays one screenful per concern)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings


class LandingSettings(BaseSettings):
    """Where trade files arrive and how much one ingest pass takes (``OHLCV_LANDING*``)."""

    landing: str | None = Field(
        default=None,
        description="The landing zone: a directory or s3://bucket/prefix where trade files "
        "arrive (read with OHLCV_S3_ENDPOINT and the S3 credentials). `ohlcv ingest` with no "
        "argument and the 'OHLCV Trades Ingest' deployment ingest each new file of it once. "
        "Unset: that deployment does nothing.",
    )
    landing_max_files: int = Field(
        default=1000,
        ge=1,
        description="At most this many files per ingest pass (oldest first); the rest wait for "
        "the next pass.",
    )
    landing_max_bytes: int = Field(
        default=4 * 1024**3,
        ge=1,
        description="At most this many bytes of files per ingest pass (a larger single file "
        "still goes, alone).",
    )
    landing_batch_rows: int = Field(
        default=5_000_000,
        ge=1,
        description="Files of a pass are ingested together, one trades commit per batch of "
        "about this many rows (small files share a commit; a large file is a batch of its own).",
    )
