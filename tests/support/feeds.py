"""Exchange files written the way Binance and Tardis.dev publish them, from oracle trades."""

from __future__ import annotations

import gzip
import zipfile
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

from tests.support.oracle import EPOCH, Trade


def _ms(t: Trade) -> int:
    return (t.ts - EPOCH) // timedelta(milliseconds=1)


def binance_rows(trades: Iterable[Trade], kind: str, unit: str) -> list[str]:
    """CSV lines of Binance spot ``trades``/``aggTrades`` or USD-M futures ``trades``."""
    lines = []
    for t in trades:
        time = t.ts_us if unit == "us" else _ms(t)
        maker = "true" if t.side == "sell" else "false"  # the taker sold: the buyer made
        quote = t.price * t.quantity
        if kind == "aggTrades":
            first = int(t.trade_id) * 10  # (Binance ids are numbers)
            lines.append(
                f"{t.trade_id},{t.price},{t.quantity},{first},{first + 3},{time},{maker},true"
            )
        elif kind == "futures":
            lines.append(f"{t.trade_id},{t.price},{t.quantity},{quote},{time},{maker}")
        else:
            lines.append(f"{t.trade_id},{t.price},{t.quantity},{quote},{time},{maker},true")
    return lines


FUTURES_HEADER = "id,price,qty,quote_qty,time,is_buyer_maker"


def write_binance_zip(
    path: Path,
    trades: list[Trade],
    kind: str = "trades",
    unit: str = "us",
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    """A Binance public-data zip: one CSV member (deflated, unless told), no header (spot)."""
    lines = binance_rows(trades, kind, unit)
    if kind == "futures":
        lines.insert(0, FUTURES_HEADER)
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr(path.with_suffix(".csv").name, "\n".join(lines) + "\n")
    return path


TARDIS_HEADER = "exchange,symbol,timestamp,local_timestamp,id,side,price,amount"


def tardis_lines(trades: Iterable[Trade], ids: Iterable[str] | None = None) -> list[str]:
    rows = list(trades)
    texts = list(ids) if ids is not None else [str(t.trade_id) for t in rows]
    return [TARDIS_HEADER] + [
        f"{t.exchange},{t.symbol},{t.ts_us},{t.ts_us + 1500},{i},{t.side},{t.price},{t.quantity}"
        for t, i in zip(rows, texts, strict=True)
    ]


def write_tardis_gz(path: Path, lines: list[str]) -> Path:
    """A Tardis.dev ``trades`` file: gzip CSV with a header, microseconds."""
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return path
