"""Arrow column helpers the parsers share: numpy views, text columns, dictionary codes."""

from __future__ import annotations

import contextlib
from typing import TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.reading import SchemaError

Column: TypeAlias = pa.Array | pa.ChunkedArray


def use_reusing_memory_pool() -> None:
    """Make jemalloc Arrow's default memory pool in this process, unless another pool than
    Arrow's own default (mimalloc) was chosen (``ARROW_DEFAULT_MEMORY_POOL``) or the wheel has
    no jemalloc. Idempotent; called by every ingestion entry point.

    Ingestion allocates a few GB per 10 M rows. With mimalloc half of a landing pass's CPU was
    the kernel's (page faults on memory taken fresh from the OS); jemalloc reuses its pages:
    a 10 M-row Binance zip went from 10.4 s to 7.2 s (medians of 3, load 1.7, 2026-12-07).
    """
    if pa.default_memory_pool().backend_name != "mimalloc":
        return
    # (a wheel without jemalloc raises ArrowNotImplementedError, a NotImplementedError)
    with contextlib.suppress(NotImplementedError):
        pa.set_memory_pool(pa.jemalloc_memory_pool())


def bools(values: Column) -> np.ndarray:
    """Boolean numpy array from an Arrow boolean array; null counts as False."""
    if values.null_count:
        values = pc.fill_null(values, False)
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=bool)


def ints(values: Column, fill: int = 0) -> np.ndarray:
    values = values.cast(pa.int64())
    if values.null_count:
        values = pc.fill_null(values, fill)
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)


def lengths(values: Column) -> np.ndarray:
    return ints(pc.utf8_length(values))


def is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def decoded(values: Column) -> Column:
    if pa.types.is_dictionary(values.type):
        return values.cast(values.type.value_type)
    return values


def text_column(values: Column, name: str) -> Column:
    """Text as large strings, or still dictionary-encoded when it comes that way (how
    :func:`~ingest.reading.read_trades_file` reads a Parquet file's text columns), so that
    each distinct value is looked at once instead of once per row."""
    t = values.type
    inner = t.value_type if pa.types.is_dictionary(t) else t
    if not (pa.types.is_null(inner) or is_text(inner)):
        raise SchemaError(
            f"column {name!r} has type {inner}, expected text; write {name} as a string column"
        )
    return values if pa.types.is_dictionary(t) else values.cast(pa.large_string())


def text_scalar(value: str) -> pa.Scalar:
    return pa.scalar(value, pa.large_string())


def first_true(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def field(parts: Column, name: str) -> Column:
    return pc.struct_field(parts, name)


def dictionary_codes(values: Column) -> tuple[np.ndarray, pa.Array]:
    """Per-row codes (-1 = null) into the distinct values, and those values."""
    encoded = pc.dictionary_encode(values)
    if isinstance(encoded, pa.Array):
        return ints(encoded.indices, fill=-1), encoded.dictionary
    encoded = encoded.unify_dictionaries()  # Arrow shares one dictionary today; not promised
    if not encoded.num_chunks:
        return np.zeros(0, np.int64), pa.array([], values.type)
    indices = pa.chunked_array([chunk.indices for chunk in encoded.chunks])
    return ints(indices, fill=-1), encoded.chunk(0).dictionary


def codes(values: Column) -> tuple[np.ndarray, pa.Array]:
    """Per-row codes (-1 = null) into a dictionary of large strings, which may hold a value more
    than once, or a null: a dictionary-encoded column's own codes (each chunk's dictionary
    appended), so its rows are not hashed again; else :func:`dictionary_codes`."""
    if not pa.types.is_dictionary(values.type):
        return dictionary_codes(values)
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    codes = np.empty(len(values), dtype=np.int64)
    dictionaries: list[pa.Array] = []  # distinct dictionaries: chunks of a file often share one
    starts: list[int] = []  # the code of each one's first value
    row = 0
    for chunk in chunks:
        known = (i for i, d in enumerate(dictionaries) if d.equals(chunk.dictionary))
        which = next(known, None)
        if which is None:
            which = len(dictionaries)
            starts.append(starts[-1] + len(dictionaries[-1]) if dictionaries else 0)
            dictionaries.append(chunk.dictionary)
        indices = chunk.indices
        if indices.null_count:  # (an unsigned index type cannot hold -1)
            indices = pc.fill_null(indices.cast(pa.int64()), -1)
        out = codes[row : row + len(chunk)]
        out[:] = indices.to_numpy(zero_copy_only=False)
        if starts[which]:
            out[out >= 0] += starts[which]
        row += len(chunk)
    if not dictionaries:
        return codes, pa.array([], pa.large_string())
    return codes, pa.concat_arrays([d.cast(pa.large_string()) for d in dictionaries])


def digits_to_ints(digits: Column) -> np.ndarray:
    """int64 of unsigned digit strings; empty or null gives 0."""
    return ints(pc.if_else(pc.equal(digits, ""), text_scalar("0"), digits).cast(pa.int64()))
