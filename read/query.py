"""What to read: :class:`CandleQuery`, built from user values that are each checked."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from core.tables import MAX_SYMBOL_LENGTH
from core.time import parse_instant, utc
from core.timeframes import Timeframe, timeframe

Instant = datetime | str


@dataclass(frozen=True)
class CandleQuery:
    """Which candles to read: windows starting in [start, end) of some symbols.

    Build it with :meth:`of`, which checks every value and says what to pass instead.
    """

    tf: Timeframe
    symbols: tuple[str, ...] = ()
    """Empty: every symbol."""
    start: datetime | None = None
    end: datetime | None = None
    exchange: str | None = None
    as_of: datetime | None = None
    live: bool = False

    @classmethod
    def of(
        cls,
        tf: str | Timeframe,
        symbols: str | Sequence[str] | None = None,
        start: Instant | None = None,
        end: Instant | None = None,
        *,
        exchange: str | None = None,
        as_of: Instant | None = None,
        live: bool = False,
    ) -> CandleQuery:
        query = cls(
            tf=timeframe(tf),
            symbols=symbols_of(symbols),
            start=instant(start, "start"),
            end=instant(end, "end"),
            exchange=_checked_name(exchange, "exchange") if exchange is not None else None,
            as_of=instant(as_of, "as_of"),
            live=live,
        )
        if query.start is not None and query.end is not None and query.start >= query.end:
            raise ValueError(
                f"start {query.start.isoformat()} is not before end {query.end.isoformat()}: "
                "pass a start earlier than the end"
            )
        if query.live and query.as_of is not None:
            raise ValueError(
                "as_of and live exclude each other: as_of reads what was published at a past "
                "time, live adds what is not published yet; pass one of them"
            )
        return query

    def describe(self) -> str:
        """The query in a few words, for messages."""
        what = ", ".join(self.symbols) if self.symbols else "all symbols"
        start = self.start.isoformat() if self.start else "the first window"
        end = self.end.isoformat() if self.end else "the last"
        return f"{self.tf} candles of {what} from {start} to {end}"


def instant(value: Instant | None, name: str) -> datetime | None:
    """An aware UTC datetime from a datetime (naive refused) or ISO-8601 text (no offset: UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return parse_instant(value)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    return utc(value)


def _checked_name(value: str, what: str) -> str:
    """A symbol or exchange as ingestion stores it (trimmed, 1-64 characters), else an error."""
    if not isinstance(value, str) or not value or value != value.strip():
        raise ValueError(
            f"{what} {value!r} is not a stored {what}: pass the name without surrounding "
            "spaces, e.g. BTC-USD"
        )
    if len(value) > MAX_SYMBOL_LENGTH or not value.isprintable():
        raise ValueError(
            f"{what} {value[:80]!r} is not a stored {what}: names are at most "
            f"{MAX_SYMBOL_LENGTH} printable characters"
        )
    return value


def symbols_of(symbols: str | Sequence[str] | None) -> tuple[str, ...]:
    if symbols is None:
        return ()
    if isinstance(symbols, str):
        symbols = [symbols]
    return tuple(dict.fromkeys(_checked_name(s, "symbol") for s in symbols))
