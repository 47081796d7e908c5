"""Market calendars: the time zone (and optional trading session) each instrument's candles follow,
and each timeframe's gap policy.

UTC with no session is the default (crypto trades around the clock). An exchange, or one symbol
of an exchange, may declare an IANA time zone and one daily trading session:

- Windows shorter than a day are aligned to the instrument's local wall clock. For a zone whose
  offset is a whole number of hours that is the UTC grid; for Asia/Kolkata (+05:30) the hourly
  windows start at :30 UTC. A zone whose clock changes would make such windows overlap at a
  switch (e.g. a 30-minute daylight saving shift against 1h windows) is refused when declared.
- A daily window is one local trading date: from local midnight to the next local midnight
  (23 or 25 hours on a daylight saving switch day, never split or doubled), or, with a session,
  from the session's open to its close on that date (trades outside it are in no daily candle).

``window_start`` and ``window_end`` stay absolute instants; the local ``trading_date`` is stored
beside them. The same rules are implemented for Spark columns in :mod:`spark_jobs.candles`;
this module holds the declarations, their checks, and the plain-Python form the planner uses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from core.ranges import Range
from core.time import duration_us, from_us, to_us, utc
from core.timeframes import TIMEFRAMES, Timeframe

DAY = timedelta(days=1)
DAY_US = 86_400_000_000
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^(\d{2}):(\d{2})$")
# Offsets are sampled over the years candles can plausibly cover (tz rules before 1970 are
# local mean times no market data lives in).
_SAMPLE_YEARS = (1970, 2100)


class CalendarError(ValueError):
    """A calendar declaration that cannot be used; the message says which value and why."""


class GapPolicy(StrEnum):
    """What a window without trades becomes."""

    NONE = "none"
    """No candle (the default)."""
    PREVIOUS_CLOSE = "previous_close"
    """Between a symbol's first and last trade: a synthetic candle, flat at the previous
    close, volume 0, trade_count 0, ``synthetic`` true."""


def is_daily(tf: Timeframe) -> bool:
    """Whether ``tf``'s windows are local trading dates (else fixed-width, wall-clock aligned)."""
    return tf.width >= DAY


@dataclass(frozen=True)
class Session:
    """One trading session per local trading date: [open, close) local wall-clock time."""

    open: time
    close: time
    weekdays: frozenset[int] = frozenset(range(5))
    """Local weekdays with a session, Monday = 0 (default Monday to Friday)."""

    @property
    def open_us(self) -> int:
        return _time_us(self.open)

    @property
    def close_us(self) -> int:
        return _time_us(self.close)

    def describe(self) -> str:
        days = ",".join(WEEKDAYS[d] for d in sorted(self.weekdays))
        return f"{self.open:%H:%M}-{self.close:%H:%M} ({days})"


@dataclass(frozen=True)
class Calendar:
    """The local time of one instrument: an IANA zone and an optional session."""

    zone: str = "UTC"
    session: Session | None = None

    def __post_init__(self) -> None:
        if self.zone != "UTC":  # (UTC_CALENDAR is built before the checks are defined)
            _check_zone(self.zone, f"calendar {self.zone}")

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.zone)

    @property
    def is_utc(self) -> bool:
        return self.zone == "UTC" and self.session is None

    def window(self, instant: datetime, tf: Timeframe) -> tuple[Range, date] | None:
        """The window of ``tf`` holding ``instant`` and its local trading date; None when the
        instant is outside this calendar's session (daily candles only)."""
        instant = utc(instant)
        local = instant.astimezone(self.tz)
        if not is_daily(tf):
            offset_us = duration_us(local.utcoffset() or timedelta(0))
            local_us = to_us(instant) + offset_us
            start_us = to_us(instant) - local_us % tf.width_us
            local_start_us = local_us - local_us % tf.width_us
            trading_date = date(1970, 1, 1) + timedelta(days=local_start_us // DAY_US)
            return Range(from_us(start_us), from_us(start_us + tf.width_us)), trading_date
        day = local.date()
        if self.session is None:
            return Range(self.at(day, time(0)), self.at(day + DAY, time(0))), day
        tod = local.time().replace(tzinfo=None)
        if day.weekday() not in self.session.weekdays:
            return None
        if not self.session.open <= tod < self.session.close:
            return None
        return Range(self.at(day, self.session.open), self.at(day, self.session.close)), day

    def at(self, day: date, wall: time) -> datetime:
        """The instant the local clock shows ``wall`` on ``day`` (first one on a repeated hour;
        the first valid one when the clock skips it)."""
        return datetime.combine(day, wall, tzinfo=self.tz).astimezone(UTC)

    def describe(self) -> str:
        return self.zone + (f", session {self.session.describe()}" if self.session else "")


UTC_CALENDAR = Calendar()


@dataclass(frozen=True)
class Calendars:
    """Which calendar each instrument follows: a symbol's own, else its exchange's, else the
    default (UTC)."""

    default: Calendar = UTC_CALENDAR
    exchanges: Mapping[str, Calendar] = field(default_factory=dict)
    symbols: Mapping[tuple[str, str], Calendar] = field(default_factory=dict)
    """Keyed by (exchange, symbol)."""

    def of(self, exchange: str, symbol: str) -> Calendar:
        return self.symbols.get((exchange, symbol), self.exchanges.get(exchange, self.default))

    @property
    def all_utc(self) -> bool:
        """True when every instrument follows UTC with no session: the plain epoch grid."""
        return all(c.is_utc for c in self.distinct())

    def distinct(self) -> list[Calendar]:
        seen: dict[Calendar, None] = {self.default: None}
        seen.update(dict.fromkeys(self.exchanges.values()))
        seen.update(dict.fromkeys(self.symbols.values()))
        return list(seen)

    def max_window(self, tf: Timeframe) -> timedelta:
        """The longest window of ``tf`` any calendar can produce (a 25-hour local day, and
        zones that once shifted by two hours: a safe bound is two days)."""
        if self.all_utc or not is_daily(tf):
            return tf.width
        return 2 * tf.width


@dataclass(frozen=True)
class Market:
    """Everything a candle job needs to know about local time and missing trades."""

    calendars: Calendars = field(default_factory=Calendars)
    gap_policies: Mapping[str, GapPolicy] = field(default_factory=dict)
    """By timeframe name; a timeframe not named has :attr:`GapPolicy.NONE`."""

    def gap_policy(self, tf: Timeframe) -> GapPolicy:
        return self.gap_policies.get(tf.name, GapPolicy.NONE)

    def fills_gaps(self, tf: Timeframe) -> bool:
        return self.gap_policy(tf) is GapPolicy.PREVIOUS_CLOSE


UTC_MARKET = Market()


# Declarations --------------------------------------------------------------------------------


def parse_calendars(text: str | None) -> Calendars:
    """Calendars from JSON text, or from the JSON file it names.

    The JSON is a list of entries, most specific wins::

        [{"exchange": "nyse", "zone": "America/New_York", "session": "09:30-16:00"},
         {"exchange": "nse", "zone": "Asia/Kolkata"},
         {"exchange": "lse", "symbol": "VOD", "zone": "Europe/London",
          "session": "08:00-16:30", "weekdays": "mon-fri"},
         {"zone": "UTC"}]

    An entry without ``exchange`` sets the default. ``weekdays`` (default mon-fri) only matters
    with a session.
    """
    if text is None or not text.strip():
        return Calendars()
    source = "OHLCV_CALENDARS"
    stripped = text.strip()
    if not stripped.startswith(("[", "{")):
        path = Path(stripped).expanduser()
        try:
            stripped = path.read_text()
        except OSError as e:
            raise CalendarError(
                f"OHLCV_CALENDARS={text!r} is neither JSON nor a readable file ({e.strerror}): "
                "pass a JSON list of calendars or the path of a file holding one"
            ) from None
        source = str(path)
    try:
        entries = json.loads(stripped)
    except json.JSONDecodeError as e:
        raise CalendarError(
            f"calendars in {source} are not valid JSON ({e.msg} at line {e.lineno}): write a "
            'list such as [{"exchange": "nyse", "zone": "America/New_York"}]'
        ) from None
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list):
        raise CalendarError(f"calendars in {source} must be a JSON list of objects")
    return calendars_from(entries)


def calendars_from(entries: Iterable[Mapping[str, Any]]) -> Calendars:
    """Calendars from declarations (see :func:`parse_calendars` for their keys)."""
    default = UTC_CALENDAR
    exchanges: dict[str, Calendar] = {}
    symbols: dict[tuple[str, str], Calendar] = {}
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise CalendarError(f"calendar entry {entry!r} is not an object with a 'zone' key")
        unknown = set(entry) - {"exchange", "symbol", "zone", "session", "weekdays"}
        if unknown:
            raise CalendarError(
                f"calendar entry {dict(entry)!r} has unknown key(s) {sorted(unknown)}: use "
                "exchange, symbol, zone, session, weekdays"
            )
        exchange, symbol = entry.get("exchange"), entry.get("symbol")
        who = _who(exchange, symbol)
        if symbol is not None and exchange is None:
            raise CalendarError(f"calendar of {who} names no exchange: add its 'exchange'")
        zone = entry.get("zone")
        if not isinstance(zone, str):
            raise CalendarError(
                f"calendar of {who} has no 'zone': give an IANA time zone, e.g. America/New_York"
            )
        _check_zone(zone, who)
        session = (
            parse_session(entry["session"], entry.get("weekdays", "mon-fri"), who)
            if entry.get("session") is not None
            else None
        )
        if session is None and entry.get("weekdays") is not None:
            raise CalendarError(f"calendar of {who} has weekdays but no session: add 'session'")
        calendar = Calendar(zone, session)
        if exchange is None:
            default = calendar
        elif symbol is None:
            exchanges[str(exchange)] = calendar
        else:
            symbols[(str(exchange), str(symbol))] = calendar
    return Calendars(default, exchanges, symbols)


def parse_session(text: object, weekdays: object, who: str = "calendar") -> Session:
    """A session from ``"HH:MM-HH:MM"`` local time and weekdays (``"mon-fri"`` or a list)."""
    parts = text.split("-") if isinstance(text, str) else []
    times = [_hhmm(p.strip()) for p in parts] if len(parts) == 2 else []
    if len(times) != 2 or None in times:
        raise CalendarError(
            f"session {text!r} of {who} is not HH:MM-HH:MM local time: write e.g. 09:30-16:00"
        )
    open_, close = times[0], times[1]
    assert open_ is not None and close is not None
    if close <= open_:
        raise CalendarError(
            f"session {text!r} of {who} closes at or before it opens: sessions must open and "
            "close on the same local date (overnight sessions are not supported); use e.g. "
            "09:30-16:00, or no session for midnight-to-midnight days"
        )
    # Daily candles are reconciled against the rollup of 30m candles: a session boundary
    # inside a 30-minute window could not be reconciled.
    for t in (open_, close):
        if (t.hour * 60 + t.minute) % 30:
            raise CalendarError(
                f"session {text!r} of {who} has a boundary at {t:%H:%M}, which is not on a "
                "half hour: daily candles are checked against 30m candles, so use boundaries "
                "such as 09:30 or 16:00"
            )
    return Session(open_, close, _weekdays(weekdays, who))


def parse_gap_policies(text: str | None) -> dict[str, GapPolicy]:
    """Gap policies from ``"1m=previous_close,5m=previous_close"`` (unnamed: none)."""
    policies: dict[str, GapPolicy] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or name not in TIMEFRAMES:
            raise CalendarError(
                f"gap policy {item.strip()!r} is not <timeframe>=<policy> with a timeframe "
                f"of {', '.join(TIMEFRAMES)}: write e.g. 1m=previous_close"
            )
        try:
            policy = GapPolicy(value)
        except ValueError:
            raise CalendarError(
                f"gap policy {value!r} for {name} is unknown: use one of "
                f"{', '.join(p.value for p in GapPolicy)}"
            ) from None
        if policy is GapPolicy.PREVIOUS_CLOSE and is_daily(TIMEFRAMES[name]):
            # Without a holiday calendar a filled daily candle would invent trading days.
            raise CalendarError(
                f"gap policy {value} is not available for {name}: daily gaps (weekends, "
                "holidays) are not outages; fill windows shorter than a day only"
            )
        policies[name] = policy
    return policies


def market(calendars: str | None, gap_policies: str | None) -> Market:
    """The Market the settings declare (``OHLCV_CALENDARS``, ``OHLCV_GAP_POLICY``)."""
    return Market(parse_calendars(calendars), parse_gap_policies(gap_policies))


# Checks --------------------------------------------------------------------------------------


def _check_zone(zone: str, who: str) -> None:
    if zone == "UTC":
        return
    if zone != zone.strip() or zone not in _zones():
        raise CalendarError(
            f"unknown time zone {zone!r} for {who}: use an IANA name such as "
            "America/New_York, Europe/London or Asia/Kolkata (zoneinfo.available_timezones())"
        )
    offsets = _offsets(zone)
    for tf in TIMEFRAMES.values():
        if is_daily(tf):
            continue
        residues = {o % tf.width_us for o in offsets}
        if len(residues) > 1:
            raise CalendarError(
                f"time zone {zone!r} of {who} shifts its clock by less than {tf} "
                f"(offsets {sorted(_fmt_offset(o) for o in offsets)}): its local {tf} windows "
                "would overlap at a switch; declare a zone whose offsets differ by whole hours"
            )


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


@lru_cache(maxsize=256)
def _offsets(zone: str) -> frozenset[int]:
    """UTC offsets (microseconds) the zone uses, sampled daily over the supported years."""
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise CalendarError(f"unknown time zone {zone!r}") from None
    start = datetime(_SAMPLE_YEARS[0], 1, 1, 12, tzinfo=UTC)
    days = (datetime(_SAMPLE_YEARS[1], 1, 1, tzinfo=UTC) - start).days
    found = set()
    for n in range(0, days, 1):
        offset = (start + timedelta(days=n)).astimezone(tz).utcoffset()
        found.add(duration_us(offset or timedelta(0)))
    return frozenset(found)


def _fmt_offset(us: int) -> str:
    sign = "-" if us < 0 else "+"
    minutes = abs(us) // 60_000_000
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _hhmm(text: str) -> time | None:
    match = _HHMM.match(text)
    if not match:
        return None
    hour, minute = int(match[1]), int(match[2])
    if hour > 23 or minute > 59:
        return None
    return time(hour, minute)


def _weekdays(value: object, who: str) -> frozenset[int]:
    error = CalendarError(
        f"weekdays {value!r} of {who} are not weekday names: write e.g. 'mon-fri', "
        "'mon,wed,fri' or a list of mon..sun"
    )
    if isinstance(value, str):
        value = value.strip().lower()
        if "-" in value and "," not in value:
            first, _, last = value.partition("-")
            if first not in WEEKDAYS or last not in WEEKDAYS:
                raise error
            lo, hi = WEEKDAYS.index(first), WEEKDAYS.index(last)
            if hi < lo:
                raise error
            return frozenset(range(lo, hi + 1))
        value = value.split(",")
    if not isinstance(value, list) or not value:
        raise error
    names = [str(v).strip().lower() for v in value]
    if any(n not in WEEKDAYS for n in names):
        raise error
    return frozenset(WEEKDAYS.index(n) for n in names)


def _who(exchange: object, symbol: object) -> str:
    if exchange is None:
        return "the default calendar"
    return f"exchange {exchange}" + (f" symbol {symbol}" if symbol is not None else "")


def _time_us(t: time) -> int:
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond
