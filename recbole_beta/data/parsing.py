"""Reading a raw interactions file in chunks, every bad row named (the converters' input).

Reading a raw interactions file in chunks with pandas, every bad row, header or encoding named by file
and line in one :class:`ConversionError` (the converter's errors)."""

import csv
import itertools
import math
import re

import numpy as np
import pandas as pd

from recbole_beta.errors import RecBoleBetaError

FIELDS = ("user", "item", "rating", "timestamp")
DEFAULT_CHUNKSIZE = 500_000
EXTRA = "__extra_field__"


class ConversionError(RecBoleBetaError, ValueError):
    """Bad input or an impossible request; ``str()`` is one line naming the file (and line)."""


def _raw_line(path, line_no, limit=80):
    """Text of line ``line_no`` (1-based), shortened, for error messages; '' if unreadable."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            text = next(itertools.islice(f, line_no - 1, None), "").rstrip("\r\n")
    except OSError:
        return ""
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def _row_error(path, line_no, reason):
    """A ConversionError for an unparsable row, quoting the row."""
    raw = _raw_line(path, line_no)
    return ConversionError(f"{path}:{line_no}: unparsable row ({reason}): {raw!r}")


def _split(line, layout):
    """Fields of one raw line (quotes honoured for one-character separators)."""
    if len(layout.sep) == 1:
        return next(csv.reader([line], delimiter=layout.sep), [])
    return line.split(layout.sep)


def _head_lines(path, n=2):
    """The first ``n`` lines of ``path`` without line ends ('' past the end); a UTF-8 byte-order mark
    (Excel writes one) is read as the encoding, not as part of the first column's name."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        lines = [line.rstrip("\r\n") for line in itertools.islice(f, n)]
    return lines + [""] * (n - len(lines))


def _field_count_error(path, line_no, want, saw, layout):
    """The error for a row whose number of fields is wrong."""
    return _row_error(path, line_no, f"expected {_logical(want, layout)} fields, "
                                     f"saw {_logical(saw, layout)}")


def _check_header(path, layout):
    """Column names from the header line; raise if one of the layout's columns is missing."""
    header = _head_lines(path, 1)[0]
    if not header:
        raise ConversionError(f"{path}: file is empty")
    found = _split(header, layout)
    missing = [c for c in layout.columns.values() if c not in found]
    if missing:
        raise ConversionError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
            f"the header has {', '.join(map(repr, found))} (separator {layout.sep!r})")
    twice = [c for c in dict.fromkeys(layout.columns.values()) if found.count(c) > 1]
    if twice:
        raise ConversionError(f"{path}: column(s) {', '.join(map(repr, twice))} appear "
                              f"more than once in the header")
    # pandas refuses duplicate names; columns we do not use may keep any unique name.
    return [c if found.index(c) == i else f"{c}.{i}" for i, c in enumerate(found)]


def _count_fields(path, layout):
    """Fields on the first line of a headerless file; raise if it has too few."""
    first = _head_lines(path, 1)[0]
    if not first:
        raise ConversionError(f"{path}: file is empty")
    n = len(_split(first, layout))
    wanted = layout.n_fields or max(layout.columns.values()) + 1
    if n < wanted:
        raise _field_count_error(path, 1, wanted, n, layout)
    return layout.n_fields or n


def _logical(n_raw, layout):
    """Raw field count as the user sees it ('::' files are read as ':' with empty gaps)."""
    return (n_raw + layout.field_width - 1) // layout.field_width


def _engine(layout):
    """pandas' C parser for one-character separators; multi-character ones need Python's."""
    return "c" if len(layout.sep) == 1 else "python"


def _sep_arg(layout):
    """The separator as pandas wants it: multi-character separators are regexes there."""
    return layout.sep if len(layout.sep) == 1 else re.escape(layout.sep)


def _reader(path, layout, chunksize):
    """A chunked pandas reader of ``path``; ``(reader, line of row 0, fields per row)``.

    One column more than the file should have is read (``EXTRA``): pandas drops
    extra fields silently when the long row starts a chunk, so a value there is
    how a row with too many fields is caught.
    """
    if layout.header:
        names, offset = _check_header(path, layout), 2
    else:
        names, offset = list(range(_count_fields(path, layout))), 1
    dtype = {}
    if not layout.integer_ids:
        # Ids of generic files stay strings ("007" is not 7); MovieLens ids are integers.
        dtype.update({layout.columns[f]: str for f in ("user", "item")})
    reader = pd.read_csv(path, sep=_sep_arg(layout), engine=_engine(layout), chunksize=chunksize,
                         header=None, skiprows=offset - 1, names=names + [EXTRA],
                         index_col=False, dtype=dtype, skip_blank_lines=False,
                         keep_default_na=False, na_values=[""])
    return reader, offset, len(names)


def _numeric(series, path, lines, what, integer):
    """``series`` as finite numbers; raise naming the first row that is missing, not a number, or
    infinite (``inf``, ``1e999``: no rating or time can be).

    ``lines[i]`` is the file line of row ``i``.
    """
    values = series if series.dtype != object else pd.to_numeric(series, errors="coerce")
    arr = values.to_numpy()
    bad = ~np.isfinite(arr) if arr.dtype.kind == "f" else np.zeros(len(arr), bool)
    if integer and arr.dtype.kind == "f":
        bad |= ~bad & (np.nan_to_num(arr) % 1 != 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise _row_error(path, int(lines[i]), _not_a_number(series.iloc[i], what, integer))
    return arr


def _not_a_number(raw, what, integer):
    """Why ``raw`` (a field's value, text or a parsed float) is not a usable number."""
    if pd.isna(raw):
        return f"missing {what}"
    try:
        infinite = math.isinf(float(raw))
    except (TypeError, ValueError):
        infinite = False
    kind = "a finite number" if infinite else "an integer" if integer else "a number"
    return f"{what} {raw!r} is not {kind}"


def refuse_negative_ratings(path, chunk):
    """Raise naming the first row of ``chunk`` (parsed, with its ``line`` numbers) whose rating is negative:
    a negative weight breaks every model that reads the rating as an interaction's strength."""
    negative = chunk["rating"] < 0
    if negative.any():
        i = int(np.argmax(negative))
        line = int(chunk["line"][i])
        raise ConversionError(f"{path}:{line}: negative rating {chunk['rating'][i]:g}; ratings must be >= 0 "
                              f"(--min-rating keeps only those at or above a threshold): {_raw_line(path, line)!r}")


def _ids(series, path, lines, what, integer):
    """Id column as int64 numbers (MovieLens) or strings (generic); raise on missing ones."""
    if integer:
        return _numeric(series, path, lines, what, True).astype(np.int64)
    missing = series.isna().to_numpy()
    if missing.any():
        raise _row_error(path, int(lines[np.argmax(missing)]), f"missing {what}")
    return series.to_numpy()


def _parse_chunk(chunk, path, layout, line_offset, n_fields):
    """Validate one chunk; return a dict of numpy columns, or None if it held only blank lines."""
    cols = layout.columns
    # skip_blank_lines=False keeps one row per line, so the row index gives the line.
    lines = chunk.index.to_numpy() + line_offset
    extra = chunk[EXTRA].notna().to_numpy()
    if extra.any():
        line = int(lines[np.argmax(extra)])
        raise _field_count_error(path, line, n_fields, len(_split(_raw_line(path, line, None),
                                                                  layout)), layout)
    if layout.empty:
        filled = chunk[list(layout.empty)].notna().to_numpy().any(axis=1)
        if filled.any():
            raise _row_error(path, int(lines[np.argmax(filled)]),
                             f"fields must be separated by {layout.display_sep!r}")
    blank = chunk[list(dict.fromkeys(cols.values()))].isna().all(axis=1).to_numpy()
    if blank.any():
        chunk, lines = chunk[~blank], lines[~blank]
        if chunk.empty:
            return None
    out = {"line": lines}  # for errors found after parsing (a negative rating)
    for name in FIELDS:
        if name not in cols:
            continue
        series = chunk[cols[name]]
        if name in ("user", "item"):
            out[name] = _ids(series, path, lines, f"{name} id", layout.integer_ids)
        else:
            out[name] = _numeric(series, path, lines, name, integer=False)
    return out


_FIELD_COUNT = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _parser_error(path, layout, err, n_fields):
    """Turn pandas' tokenizer error into a one-line ConversionError with the line number."""
    m = _FIELD_COUNT.search(str(err))
    if m:
        _, line, saw = (int(g) for g in m.groups())
        return _field_count_error(path, line, n_fields, saw, layout)
    return ConversionError(f"{path}: cannot parse: {str(err).strip().splitlines()[-1]}")


def iter_chunks(path, layout, chunksize=DEFAULT_CHUNKSIZE):
    """Yield validated chunks of ``path`` as dicts of numpy columns (user, item[, rating][, timestamp]) and
    each row's file ``line``."""
    try:
        reader, offset, n_fields = _reader(path, layout, chunksize)
    except UnicodeDecodeError:  # pandas reads the first rows as it opens the file
        raise not_utf8_error(path) from None
    with reader:
        try:
            for chunk in reader:
                parsed = _parse_chunk(chunk, path, layout, offset, n_fields)
                if parsed is not None:
                    yield parsed
        except pd.errors.ParserError as err:
            raise _parser_error(path, layout, err, n_fields) from None
        except UnicodeDecodeError:
            raise not_utf8_error(path) from None


def not_utf8_error(path):
    """The error for a file that is not UTF-8, naming the first line that is not."""
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                return ConversionError(f"{path}:{line_no}: not UTF-8 text (byte 0x{line[err.start]:02x} at column "
                                       f"{err.start + 1}); re-encode the file as UTF-8, e.g. with iconv")
    return ConversionError(f"{path}: not UTF-8 text; re-encode the file as UTF-8, e.g. with iconv")
