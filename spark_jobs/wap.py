"""Write-audit-publish on Iceberg branches: candles reach ``main`` only after validation.

A run resets the audit branch to ``main`` (:func:`start_audit`), writes its candles there
(``refresh_candles(..., branch=AUDIT_BRANCH)``), is validated on that branch, and then either
fast-forwards ``main`` to it (:func:`publish`) or leaves ``main`` as it was and tags the rejected
snapshot for inspection (:func:`keep_rejected`). The late-trade watermark travels in the
branch snapshot's summary, so ``main`` only claims the trades of what it has published.

Iceberg's branch DDL (``ALTER TABLE ... BRANCH``) is parsed by Iceberg's own SQL extension,
which accepts neither ``IDENTIFIER(:name)`` nor parameter markers. Its statements are built
from the table name (catalog and namespace are validated identifiers in ``Settings``, table
names are this project's constants) and integers from Iceberg itself, never from free text.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from pyspark.sql import SparkSession

from spark_jobs.snapshots import branch_snapshot_id, main_snapshot_id, ref_snapshot_ids

AUDIT_BRANCH = "audit"
REJECTED_TAG_PREFIX = "rejected-"
REJECTED_RETENTION_DAYS = 14
_QUALIFIED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){2}$")


def _checked(table: str) -> str:
    """``catalog.namespace.table`` as backtick-quoted parts, refusing anything else."""
    if not _QUALIFIED.match(table):
        raise ValueError(f"{table!r} is not catalog.namespace.table of plain identifiers")
    return ".".join(f"`{part}`" for part in table.split("."))


def start_audit(spark: SparkSession, table: str, branch: str = AUDIT_BRANCH) -> int | None:
    """Point ``branch`` at ``main``'s current snapshot (discarding what a failed run left).

    On a table never published, ``main`` does not exist yet; the branch then starts empty.
    Returns ``main``'s snapshot id (None if it does not exist).
    """
    name = _checked(table)
    main = main_snapshot_id(spark, table)
    if main is None:
        if branch_snapshot_id(spark, table, branch) is not None:
            spark.sql(f"ALTER TABLE {name} DROP BRANCH `{branch}`")
        spark.sql(f"ALTER TABLE {name} CREATE BRANCH `{branch}`")
    else:
        spark.sql(
            f"ALTER TABLE {name} CREATE OR REPLACE BRANCH `{branch}` AS OF VERSION {int(main)}"
        )
    return main


def publish(spark: SparkSession, table: str, branch: str = AUDIT_BRANCH) -> int | None:
    """Fast-forward ``main`` to ``branch``; return ``main``'s new snapshot id.

    Fails (and changes nothing) if ``main`` moved since :func:`start_audit`: there is one
    writer per candle table, so that means someone else wrote to it.
    """
    refs = ref_snapshot_ids(spark, table, "main", branch)
    audited = refs.get(branch)
    if audited is None:
        raise ValueError(f"{table} has no branch {branch!r} to publish: run start_audit first")
    if audited == refs.get("main"):
        return audited  # nothing new on the branch
    catalog = table.split(".")[0]
    _checked(table)
    # The qualified name: given "namespace.name", Iceberg first tries the namespace as a
    # catalog and logs the failure with a stack trace on every publish.
    moved = spark.sql(
        f"CALL `{catalog}`.system.fast_forward(table => :table, branch => 'main', to => :branch)",
        args={"table": table, "branch": branch},
    ).collect()
    # (the procedure answers with main's snapshot before and after: no query to ask again)
    return int(moved[0]["updated_ref"])


def keep_rejected(
    spark: SparkSession, table: str, branch: str = AUDIT_BRANCH, now: datetime | None = None
) -> str | None:
    """Tag the branch's snapshot so rejected candles stay inspectable after the next run.

    Returns the tag name (None when the branch holds nothing beyond ``main``).
    """
    refs = ref_snapshot_ids(spark, table, "main", branch)
    audited = refs.get(branch)
    if audited is None or audited == refs.get("main"):
        return None
    tag = f"{REJECTED_TAG_PREFIX}{(now or datetime.now(UTC)):%Y%m%dT%H%M%S%f}"
    spark.sql(
        f"ALTER TABLE {_checked(table)} CREATE TAG `{tag}` AS OF VERSION {int(audited)} "
        f"RETAIN {REJECTED_RETENTION_DAYS} DAYS"
    )
    return tag
