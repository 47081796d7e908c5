"""What `bench/chaos.py` records and reports, and how it is configured: its record of faults
and flow runs, Prefect read-outs, the oracle (every candle against DuckDB), the summary, the
/proc helpers that find flow-run processes, and the environment its commands inherit. Split
from chaos.py so each stays readable; not a test, not a library."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext
from pathlib import Path
from typing import Any

CANDLE_TIMEFRAMES = ("1m", "5m", "30m", "1h", "1d")
EIGHT_PLACES = Decimal("0.00000001")


@dataclass
class Fault:
    kind: str
    at: datetime
    pid: int | None
    restarted_at: datetime | None = None


@dataclass
class Record:
    """What happened, for the summary."""

    faults: list[Fault] = field(default_factory=list)
    unexpected_exits: Counter[str] = field(default_factory=Counter)
    restarts_failed: Counter[str] = field(default_factory=Counter)
    commands_not_exited: list[str] = field(default_factory=list)
    ingest_errors: Counter[str] = field(default_factory=Counter)
    trigger_errors: Counter[str] = field(default_factory=Counter)
    triggered: Counter[str] = field(default_factory=Counter)
    sent_ids: set[int] = field(default_factory=set)
    batches: int = 0
    replays: int = 0
    late_batches: int = 0
    flow_processes: dict[tuple[int, int], float] = field(default_factory=dict)
    """(pid, start ticks) of every flow-run process seen -> when first seen (epoch s)."""


# Prefect read-outs ------------------------------------------------------------------------


def _client() -> Any:
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def all_runs(since: datetime) -> list[Any]:
    """Flow runs of the six deployments created since ``since``."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterExpectedStartTime
    from prefect.client.schemas.sorting import FlowRunSort

    runs: list[Any] = []
    with _client() as client:
        while True:
            page = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    expected_start_time=FlowRunFilterExpectedStartTime(after_=since)  # type: ignore[arg-type]
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                limit=200,
                offset=len(runs),
            )
            runs += page
            if len(page) < 200:
                return [r for r in runs if r.deployment_id is not None]


def deployment_names() -> dict[Any, str]:
    with _client() as client:
        return {d.id: d.name.removeprefix("ohlcv-") for d in client.read_deployments()}


def published_flags(since: datetime) -> dict[Any, bool]:
    """Flow run id -> whether its metrics artifact says it published (skipped runs have none)."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    flags: dict[Any, bool] = {}
    offset = 0
    with _client() as client:
        while True:
            page = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="ohlcv-")),
                limit=200,
                offset=offset,
            )
            offset += len(page)
            for artifact in page:
                if artifact.created is None or artifact.created < since:
                    continue
                if not (artifact.key or "").endswith("-metrics"):
                    continue
                data = artifact.data
                rows = json.loads(data) if isinstance(data, str) else data
                values = {row["metric"]: row["value"] for row in rows or []}
                if artifact.flow_run_id is not None:
                    flags[artifact.flow_run_id] = values.get("published") == "True"
            if len(page) < 200:
                return flags


def published_runs(since: datetime, changed_only: bool = True) -> dict[str, list[datetime]]:
    """End times of completed runs started after ``since`` that published (with
    ``changed_only=False``: that ran the pipeline, whether or not a candle changed), by
    timeframe."""
    names = deployment_names()
    flags = published_flags(since)
    found: dict[str, list[datetime]] = defaultdict(list)
    for run in all_runs(since - timedelta(minutes=30)):
        if (
            run.state_type is not None
            and run.state_type.value == "COMPLETED"
            and run.id in flags
            and (flags[run.id] or not changed_only)
            and run.start_time is not None
            and run.start_time >= since
            and run.end_time is not None
        ):
            found[names.get(run.deployment_id, "?")].append(run.end_time)
    return found


def held_slots() -> dict[str, int]:
    """Concurrency slots (writer slots, deployment limits) held now: once every run has ended,
    a held slot is one nobody will give back."""
    with _client() as client:
        return {
            limit.name: limit.active_slots
            for limit in client.read_global_concurrency_limits(limit=100)
            if limit.active_slots
        }


def running_runs(tf: str) -> bool:
    names = deployment_names()
    return any(
        r.state_type is not None
        and r.state_type.value == "RUNNING"
        and names.get(r.deployment_id) == tf
        for r in all_runs(datetime.now(UTC) - timedelta(hours=2))
    )


# The oracle ---------------------------------------------------------------------------------


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us(value: datetime) -> int:
    """Microseconds since the epoch, exactly (a float timestamp may be off by one)."""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(microseconds=1)


def compare(catalog: Any, namespace: str, closed_by: datetime, sent: set[int]) -> dict[str, Any]:
    """Every candle of the five tables (main) against a recomputation in DuckDB."""
    import duckdb

    from core.tables import CANDLE_KEY
    from core.timeframes import TIMEFRAMES

    trades = catalog.load_table((namespace, "trades")).scan().to_arrow()
    stored_ids = trades.column("trade_id").to_pylist()
    db = duckdb.connect()
    db.execute("SET TimeZone = 'UTC'")
    db.register("trades", trades)
    result: dict[str, Any] = {
        "trades_sent": len(sent),
        "trades_stored": len(stored_ids),
        "trades_lost": len(sent - set(stored_ids)),
        "trade_keys_stored_twice": len(stored_ids) - len(set(stored_ids)),
        "tables": {},
    }
    for tf in CANDLE_TIMEFRAMES:
        width = TIMEFRAMES[tf].width_us
        oracle_rows = db.execute(
            """
            SELECT exchange, symbol, epoch_us(ts) // $w * $w AS ws,
                   arg_min(price, (epoch_us(ts), trade_id)) AS open, max(price) AS high,
                   min(price) AS low, arg_max(price, (epoch_us(ts), trade_id)) AS close,
                   sum(quantity) AS volume,
                   -- DECIMAL(18, 8) * DECIMAL(18, 8) overflows DuckDB's DECIMAL(18)
                   sum(price::DECIMAL(38, 8) * quantity::DECIMAL(38, 8)) AS quote_volume,
                   count(*) AS trade_count, epoch_us(min(ts)) AS open_ts,
                   epoch_us(max(ts)) AS close_ts
            FROM trades GROUP BY ALL
            """,
            {"w": width},
        ).fetchall()
        oracle: dict[tuple[str, str, int], dict[str, Any]] = {}
        for ex, sym, ws, o, h, lo, c, v, qv, n, ots, cts in oracle_rows:
            with localcontext() as ctx:
                ctx.prec = 80
                vwap = (Decimal(qv) / Decimal(v)).quantize(EIGHT_PLACES, rounding=ROUND_HALF_UP)
            oracle[(ex, sym, ws)] = {
                "window_end": ws + width,
                "open": o,
                "high": h,
                "low": lo,
                "close": c,
                "volume": v,
                "quote_volume": qv,
                "trade_count": n,
                "vwap": vwap,
                "open_ts": ots,
                "close_ts": cts,
                "trading_date": datetime.fromtimestamp(ws / 1e6, UTC).date(),
                "synthetic": False,
            }
        table = catalog.load_table((namespace, TIMEFRAMES[tf].table)).scan().to_arrow()
        counts: Counter[tuple[str, str, int]] = Counter()
        differing: list[str] = []
        extra = 0
        for row in table.to_pylist():
            key = (row["exchange"], row["symbol"], _us(row["window_start"]))
            counts[key] += 1
            want = oracle.get(key)
            if want is None:
                extra += 1
                continue
            got = {
                **row,
                "window_end": _us(row["window_end"]),
                "open_ts": _us(row["open_ts"]) if row["open_ts"] else None,
                "close_ts": _us(row["close_ts"]) if row["close_ts"] else None,
            }
            wrong = [k for k, v in want.items() if got.get(k) != v]
            if wrong:
                differing.append(
                    f"{tf} {key}: " + ", ".join(f"{k} {got.get(k)} != {want[k]}" for k in wrong)
                )
        closed = {k for k, w in oracle.items() if w["window_end"] <= _us(closed_by)}
        result["tables"][tf] = {
            "candles": table.num_rows,
            "oracle_candles": len(oracle),
            "duplicate_keys": sum(1 for n in counts.values() if n > 1),
            "differing": len(differing),
            "missing_closed": len(closed - set(counts)),
            "extra": extra,
            "examples": differing[:5],
        }
        assert CANDLE_KEY == ("exchange", "symbol", "window_start")
    return result


# Small helpers --------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The environment of the bench's `ohlcv` commands: its OHLCV_ settings; no
    PREFECT_API_URL, so the commands use (and `stack up` starts) the bench's local server."""
    return {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}


def children(pid: int) -> list[int]:
    """All descendants of ``pid``."""
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                for child in (task / "children").read_text().split():
                    found += [int(child), *children(int(child))]
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def start_ticks(pid: int) -> int:
    """The process's start time in clock ticks since boot (0 when it is gone or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    gone = fields[0] in "ZX" or not Path(f"/proc/{pid}/exe").exists()  # zombie, exiting
    return 0 if gone else int(fields[19])


def started_at(pid: int) -> float:
    boot = next(
        float(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime")
    )
    return boot + start_ticks(pid) / os.sysconf("SC_CLK_TCK")


def py_spy(pid: int) -> str:
    spy = shutil.which("py-spy") or str(Path.home() / ".local/bin/py-spy")
    try:
        done = subprocess.run(
            [spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60
        )
        return done.stdout + done.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"(no py-spy dump: {e})"


def summarise(rec: Record, started: datetime, caught: dict[str, datetime | None]) -> dict[str, Any]:
    """The figures of a run, from its record and the Prefect server."""
    runs = all_runs(started)
    names = deployment_names()
    flags = published_flags(started)
    by_state: dict[str, Counter[str]] = defaultdict(Counter)
    recovered: Counter[str] = Counter()
    unrecovered: list[str] = []
    for run in runs:
        tf = names.get(run.deployment_id, "?")
        state = run.state_name or "?"
        if state == "Completed" and run.id not in flags:
            state = "Completed (skipped)"
        by_state[tf][state] += 1
        if run.state_type is not None and run.state_type.value in ("FAILED", "CRASHED"):
            later = [
                r
                for r in runs
                if r.deployment_id == run.deployment_id
                and r.state_type is not None
                and r.state_type.value == "COMPLETED"
                and r.start_time is not None
                and run.start_time is not None
                and r.start_time > run.start_time
            ]
            if later:
                recovered[tf] += 1
            else:
                unrecovered.append(f"{tf} {run.name} {state}")
    published: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for run in runs:
        if flags.get(run.id) and run.start_time is not None and run.end_time is not None:
            published[names.get(run.deployment_id, "?")].append((run.start_time, run.end_time))
    to_publish: dict[str, float | None] = {}
    for tf in CANDLE_TIMEFRAMES:
        worst = 0.0
        for fault in rec.faults:
            ends = [end for start, end in published[tf] if start >= fault.at]
            if not ends:
                worst = float("inf")
                break
            worst = max(worst, (min(ends) - fault.at).total_seconds())
        to_publish[tf] = round(worst, 1) if worst != float("inf") else None
    return {
        "faults_by_kind": dict(Counter(f.kind for f in rec.faults)),
        "faults": [f"{f.at:%H:%M:%S} {f.kind} pid {f.pid}" for f in rec.faults],
        "unexpected_exits": dict(rec.unexpected_exits),
        "restarts_failed": dict(rec.restarts_failed),
        "triggered": dict(rec.triggered),
        "trigger_errors": dict(rec.trigger_errors),
        "feed": {
            "batches": rec.batches,
            "late_batches": rec.late_batches,
            "replayed_batches": rec.replays,
            "ingest_errors": dict(rec.ingest_errors),
        },
        "flow_runs_by_state": {tf: dict(c) for tf, c in sorted(by_state.items())},
        "failed_or_crashed_recovered": dict(recovered),
        "failed_or_crashed_not_recovered": unrecovered,
        "longest_fault_to_published_s": to_publish,
        "caught_up_at": {tf: t.isoformat() if t else None for tf, t in caught.items()},
        "flow_run_processes_seen": len(rec.flow_processes),
        "slots_held_at_end": held_slots(),
        "commands_not_exited": rec.commands_not_exited,
    }


DEFAULT_PORTS = (15002, 4200)  # a user's stack: never this bench's


def configure(args: argparse.Namespace) -> None:
    """Every OHLCV_ setting of this bench, in the environment its commands inherit."""
    ports = (args.connect_port, args.prefect_port)
    if set(ports) & set(DEFAULT_PORTS):
        raise SystemExit(f"ports {ports}: the defaults {DEFAULT_PORTS} are a user's, pick others")
    os.environ["OHLCV_DATA_DIR"] = str(args.data_dir)
    os.environ["OHLCV_GX_DIR"] = str(args.data_dir / "gx")
    os.environ["OHLCV_CONNECT_PORT"] = str(args.connect_port)
    os.environ["OHLCV_UI_PORT"] = str(args.ui_port)
    os.environ["OHLCV_PREFECT_PORT"] = str(args.prefect_port)
    os.environ["OHLCV_DRIVER_MEMORY"] = args.driver_memory
    os.environ.pop("SPARK_REMOTE", None)
    os.environ.pop("PREFECT_API_URL", None)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    # The bench's own Prefect client (never a user's profile or server), set before Prefect
    # is imported (it reads its settings then); the `ohlcv` commands get no PREFECT_API_URL.
    os.environ["PREFECT_HOME"] = str(args.data_dir / "prefect-client")
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{args.prefect_port}/api"
