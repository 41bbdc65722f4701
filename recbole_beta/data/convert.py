"""Convert raw interaction files into RecBole atomic ``.inter`` files.

Supported inputs: MovieLens ml-100k (``u.data``), ml-1m / ml-10m (``ratings.dat``),
ml-20m / ml-25m / ml-latest(-small) (``ratings.csv``) and a generic CSV/TSV whose
user, item, rating and timestamp columns the caller names.

The file is read in chunks (:mod:`recbole_beta.data.parsing`); user and item ids are stored as int32 codes into a
vocabulary while filtering, so memory grows with the number of kept rows (16 bytes
each for MovieLens) and not with the size of the raw text.

Filtering follows the Mult-VAE preprocessing of Liang et al. (2018): keep
ratings >= a threshold as implicit feedback, then drop items and users with too
few interactions (items first, then users, as in the paper's ``filter_triplets``),
optionally repeated until nothing changes (k-core).

A user-item pair on several rows (that pass the threshold) is one interaction: the last row is kept and
the summary says how many went. A rating that is not a finite number >= 0 is refused, naming its line.
"""

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_beta.data.parsing import (
    DEFAULT_CHUNKSIZE, FIELDS, ConversionError, iter_chunks, refuse_negative_ratings,
)
from recbole_beta.files import AtomicFiles, write_json

ATOMIC_HEADER = {
    "user": "user_id:token",
    "item": "item_id:token",
    "rating": "rating:float",
    "timestamp": "timestamp:float",
}
WRITE_CHUNK = 1_000_000
#: the command-line option of each field's column, for messages
COLUMN_OPTIONS = {"user": "--user-col", "item": "--item-col", "rating": "--rating-col", "timestamp": "--time-col"}


@dataclass(frozen=True)
class Layout:
    """How to read one kind of raw file.

    ``columns`` maps our field names to a header name (``header=True``) or a
    0-based position (``header=False``). ``n_fields`` fixes the number of fields of
    headerless files; ``empty`` lists positions that must be empty (the gaps
    left by reading ``::``-separated files with a one-character separator, which
    keeps pandas' fast C parser).
    """

    sep: str
    header: bool
    columns: dict
    filename: str = ""
    n_fields: int = 0
    empty: tuple = ()
    integer_ids: bool = False
    display_sep: str = ""
    field_width: int = 1  # raw fields per logical field (2 for '::' read as ':')


_ML100K = Layout(sep="\t", header=False, n_fields=4, filename="u.data", integer_ids=True,
                 columns={"user": 0, "item": 1, "rating": 2, "timestamp": 3})
_ML_DAT = Layout(sep=":", header=False, n_fields=7, empty=(1, 3, 5), filename="ratings.dat",
                 integer_ids=True, display_sep="::", field_width=2,
                 columns={"user": 0, "item": 2, "rating": 4, "timestamp": 6})
_ML_CSV = Layout(sep=",", header=True, filename="ratings.csv", integer_ids=True,
                 columns={"user": "userId", "item": "movieId", "rating": "rating",
                          "timestamp": "timestamp"})

FORMATS = {
    "ml-100k": _ML100K,
    "ml-1m": _ML_DAT,
    "ml-10m": _ML_DAT,
    "ml-20m": _ML_CSV,
    "ml-25m": _ML_CSV,
    "ml-latest": _ML_CSV,
    "ml-latest-small": _ML_CSV,
}
# What a bare file name says about its layout, for --format auto.
_AUTO_BY_FILENAME = {"u.data": "ml-100k", "ratings.dat": "ml-1m", "ratings.csv": "ml-20m"}


@dataclass
class Filters:
    """The Mult-VAE style filters; ``None``/0 disables one."""

    min_rating: float = None
    min_user_inter: int = 0
    min_item_inter: int = 0
    k_core: bool = False

    def as_dict(self):
        """Plain dict for the summary JSON."""
        return {"min_rating": self.min_rating, "min_user_inter": self.min_user_inter,
                "min_item_inter": self.min_item_inter, "k_core": self.k_core}


# Liang et al. 2018 (ML-20M): the reference code keeps ``rating > 3.5``, i.e. >= 4 on
# MovieLens' half-star scale, then drops users with < 5 ratings in a single pass.
MULTVAE_FILTERS = Filters(min_rating=4.0, min_user_inter=5, min_item_inter=0, k_core=False)


def generic_layout(sep=",", user="user_id", item="item_id", rating=None, timestamp=None,
                   header=True):
    """Layout of a generic delimited file; columns are names, or 0-based positions if ``header=False``."""
    columns = {"user": user, "item": item, "rating": rating, "timestamp": timestamp}
    columns = {k: v for k, v in columns.items() if v is not None}
    if not header:
        try:
            columns = {k: int(v) for k, v in columns.items()}
        except (TypeError, ValueError):
            raise ConversionError("without a header, columns must be 0-based positions, got "
                                  + ", ".join(f"{k}={v!r}" for k, v in columns.items())) from None
        for field, position in columns.items():
            if position < 0:
                raise ConversionError(f"{COLUMN_OPTIONS[field]}={position}: a position must be >= 0 (0 is the "
                                      "first field)")
    fields = list(columns)
    for i, field in enumerate(fields):  # one column read as two fields (users as items) is no dataset
        other = next((f for f in fields[i + 1:] if columns[f] == columns[field]), None)
        if other is not None:
            raise ConversionError(f"{COLUMN_OPTIONS[field]} and {COLUMN_OPTIONS[other]} name the same column "
                                  f"{columns[field]!r}")
    if not sep:
        raise ConversionError("the field separator must not be empty")
    return Layout(sep=sep, header=header, columns=columns)


# ----------------------------------------------------------------------------- reading

@dataclass
class _Vocab:
    """Grows a value -> int32 code mapping chunk by chunk (codes in order of first appearance)."""

    index: pd.Index = None

    def encode(self, values):
        """Codes of ``values``, adding unseen ones to the vocabulary."""
        if self.index is None:
            codes, uniques = pd.factorize(values)
            self.index = pd.Index(uniques)
            return codes.astype(np.int32)
        codes = self.index.get_indexer(values)
        new = codes < 0
        if new.any():
            fresh = pd.Index(pd.unique(values[new]))
            codes[new] = len(self.index) + fresh.get_indexer(values[new])
            self.index = self.index.append(fresh)
        return codes.astype(np.int32)

    def __len__(self):
        return 0 if self.index is None else len(self.index)


# ----------------------------------------------------------------------------- filtering

@dataclass
class Interactions:
    """Interactions as parallel numpy columns; users and items as int32 codes into vocabularies."""

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray = None
    timestamp: np.ndarray = None
    users: pd.Index = None  # code -> original id
    items: pd.Index = None
    rows_read: int = 0

    def __len__(self):
        return len(self.user)

    def columns(self):
        """Field names present, in atomic-file order."""
        return [f for f in FIELDS if getattr(self, f) is not None]

    def take(self, mask):
        """Keep the rows where ``mask`` holds (in place)."""
        for f in self.columns():
            setattr(self, f, getattr(self, f)[mask])


def _compact_time(values):
    """Timestamps, as int32 when they are integers that fit (unix seconds do until 2038)."""
    if values.dtype.kind == "i" and len(values) and \
            np.iinfo(np.int32).min <= values.min() and values.max() <= np.iinfo(np.int32).max:
        return values.astype(np.int32)
    return values


class _Column:
    """An append-only numpy column kept in one buffer, grown by half when full.

    Many per-chunk arrays interleaved with the parser's temporaries fragment the
    heap and keep hundreds of MiB resident; one large buffer is mapped (and
    unmapped) as a whole, and the pages of its unused tail are never touched.
    """

    def __init__(self, capacity):
        self.buf, self.n, self.capacity = None, 0, capacity

    def append(self, values):
        """Add ``values`` at the end, widening the dtype if they need it."""
        end = self.n + len(values)
        dtype = values.dtype if self.buf is None else np.result_type(self.buf.dtype, values.dtype)
        if self.buf is None or end > len(self.buf) or dtype != self.buf.dtype:
            size = max(end, self.capacity if self.buf is None else int(len(self.buf) * 1.5))
            new = np.empty(size, dtype)
            if self.buf is not None:
                new[: self.n] = self.buf[: self.n]
            self.buf = new
        self.buf[self.n:end] = values
        self.n = end

    def array(self):
        """The values appended so far (a view of the buffer)."""
        return self.buf[: self.n]


def _initial_capacity(path):
    """Rows to reserve: a generous guess from the file size (no line is under ~8 bytes), capped."""
    return int(min(max(os.path.getsize(path) // 8, 1024), 50_000_000))


def read_interactions(path, layout, min_rating=None, chunksize=DEFAULT_CHUNKSIZE):
    """Read ``path`` chunk by chunk, keeping rows with rating >= ``min_rating``; ids become int32 codes."""
    if min_rating is not None and "rating" not in layout.columns:
        raise ConversionError(f"{path}: a rating threshold was given but the input has no rating column")
    users, items = _Vocab(), _Vocab()
    capacity = _initial_capacity(path)
    columns = {f: _Column(capacity) for f in FIELDS if f in layout.columns}
    # MovieLens ratings are half stars, exact in float32; other data keeps float64.
    rating_dtype = np.float32 if layout.integer_ids else np.float64
    rows_read = 0
    for chunk in iter_chunks(path, layout, chunksize):
        rows_read += len(chunk["user"])
        if min_rating is not None:
            keep = chunk["rating"] >= min_rating
            chunk = {k: v[keep] for k, v in chunk.items()}
        if "rating" in chunk:  # after the threshold: --min-rating may drop them
            refuse_negative_ratings(path, chunk)
        columns["user"].append(users.encode(chunk["user"]))
        columns["item"].append(items.encode(chunk["item"]))
        if "rating" in columns:
            columns["rating"].append(chunk["rating"].astype(rating_dtype))
        if "timestamp" in columns:
            columns["timestamp"].append(_compact_time(chunk["timestamp"]))
    if rows_read == 0:
        raise ConversionError(f"{path}: no interactions in the file")
    return Interactions(users=users.index, items=items.index, rows_read=rows_read,
                        **{f: c.array() for f, c in columns.items()})


def drop_duplicates(data):
    """Keep the last row (in file order) of each user-item pair, in place; return how many rows went.

    A pair is one interaction: counted twice it would inflate the filters' counts and the density."""
    if len(data) < 2:
        return 0
    key = data.user.astype(np.int64) * len(data.items) + data.item
    ordered = np.sort(key)
    if not (ordered[1:] == ordered[:-1]).any():  # the common case, without unique's index arrays
        return 0
    del ordered
    _, last = np.unique(key[::-1], return_index=True)
    keep = np.zeros(len(key), bool)
    keep[len(key) - 1 - last] = True
    data.take(keep)
    return len(key) - len(last)


def filter_counts(data, min_user_inter=0, min_item_inter=0, k_core=False):
    """Drop items, then users, with fewer interactions than asked; repeat until stable if ``k_core``.

    Returns the number of passes made.
    """
    passes = 0
    while True:
        passes += 1
        changed = False
        for field, minimum in (("item", min_item_inter), ("user", min_user_inter)):
            if minimum and minimum > 1 and len(data):
                codes = getattr(data, field)
                ok = np.bincount(codes) >= minimum
                keep = ok[codes]
                if not keep.all():
                    data.take(keep)
                    changed = True
        if not (k_core and changed):
            return passes


def summarize(data):
    """Counts and density of ``data`` (only ids that still occur are counted)."""
    n_users = int(np.count_nonzero(np.bincount(data.user))) if len(data) else 0
    n_items = int(np.count_nonzero(np.bincount(data.item))) if len(data) else 0
    n = len(data)
    density = n / (n_users * n_items) if n_users and n_items else 0.0
    return {"users": n_users, "items": n_items, "interactions": n, "density": density}


# ----------------------------------------------------------------------------- writing

def atomic_header(columns):
    """Header line of an atomic .inter file for our field names."""
    return "\t".join(ATOMIC_HEADER[c] for c in columns) + "\n"


def write_frames(f, header_columns, frames):
    """Write an atomic header then each DataFrame of ``frames`` as tab-separated rows."""
    f.write(atomic_header(header_columns))
    for frame in frames:
        frame.to_csv(f, sep="\t", header=False, index=False, lineterminator="\n")


def _frames(data, rows=WRITE_CHUNK):
    """The interactions with original ids, as DataFrames of ``rows`` rows."""
    for start in range(0, len(data), rows):
        sl = slice(start, start + rows)
        frame = {"user": data.users.take(data.user[sl]), "item": data.items.take(data.item[sl])}
        for f in ("rating", "timestamp"):
            if getattr(data, f) is not None:
                frame[f] = getattr(data, f)[sl]
        yield pd.DataFrame(frame)


# ----------------------------------------------------------------------------- entry point

def resolve_input(input_path, fmt=None):
    """``(file, format)`` for a file or an extracted MovieLens directory; ``fmt=None`` guesses."""
    path = Path(input_path)
    if path.is_dir():
        names = [FORMATS[fmt].filename] if fmt in FORMATS else list(_AUTO_BY_FILENAME)
        found = [path / n for n in names if (path / n).is_file()]
        if not found:
            raise ConversionError(f"{path}: directory holds none of {', '.join(names)}")
        path = found[0]
    elif not path.exists():
        raise ConversionError(f"{path}: no such file")
    if fmt is None or fmt == "auto":
        fmt = _AUTO_BY_FILENAME.get(path.name)
        if fmt is None:
            raise ConversionError(f"{path}: cannot tell the format from the file name; "
                                  f"pass --format ({', '.join(FORMATS)} or csv)")
    return path, fmt


def default_name(path, fmt):
    """Dataset name when none is given: the MovieLens format's, else the file's stem."""
    if fmt == "ml-100k":
        # RecBole always reads its bundled copy for the name ml-100k, whatever data_path says.
        return "ml-100k-converted"
    return fmt if fmt in FORMATS else Path(path).stem


def convert(input_path, out_dir, name=None, fmt=None, layout=None, filters=None,
            chunksize=DEFAULT_CHUNKSIZE, log=None):
    """Convert a raw interaction file into ``<out_dir>/<name>/<name>.inter`` plus ``<name>.summary.json``.

    ``fmt`` is a key of :data:`FORMATS`, ``"csv"`` (then ``layout`` from
    :func:`generic_layout` is required) or ``None``/``"auto"`` to guess from the
    file name. ``filters`` is a :class:`Filters`. ``log`` (e.g. ``print``) gets the
    summary line. Returns the summary dict. Raises :class:`ConversionError`.
    """
    started = time.perf_counter()
    filters = filters or Filters()
    if filters.min_rating is not None and not math.isfinite(filters.min_rating):
        raise ConversionError(f"--min-rating {filters.min_rating}: the rating threshold must be a finite number")
    if fmt == "csv":
        if layout is None:
            raise ConversionError("format csv needs a column layout (generic_layout)")
        path = Path(input_path)
        if not path.is_file():
            raise ConversionError(f"{path}: {'a directory: give the file in it' if path.is_dir() else 'no such file'}")
    else:
        path, fmt = resolve_input(input_path, fmt)
        if fmt not in FORMATS:
            raise ConversionError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}, csv")
        layout = FORMATS[fmt]
    name = default_name(path, fmt) if name is None else name
    if not name or "/" in name or name in (".", ".."):
        raise ConversionError(f"bad dataset name {name!r}")

    data = read_interactions(path, layout, filters.min_rating, chunksize)
    rows_after_rating = len(data)
    duplicates = drop_duplicates(data)  # before the count filters, which must count each pair once
    passes = filter_counts(data, filters.min_user_inter, filters.min_item_inter, filters.k_core)
    if len(data) == 0:
        raise ConversionError(
            f"{path}: no interactions left after filtering ({data.rows_read} rows read; "
            + ", ".join(f"{k}={v}" for k, v in filters.as_dict().items()) + ")")

    target = Path(out_dir) / name
    summary = {"dataset": name, **summarize(data), "source": str(path), "format": fmt,
               "rows_read": data.rows_read, "rows_after_rating_filter": rows_after_rating,
               "duplicates_dropped": duplicates,
               "filters": filters.as_dict(), "filter_passes": passes,
               "columns": [ATOMIC_HEADER[c] for c in data.columns()],
               "inter_file": str(target / f"{name}.inter")}
    return write_dataset(target, name, lambda f: write_frames(f, data.columns(), _frames(data)), summary,
                         started, log)


def write_dataset(target, name, write_inter, summary, started, log=None):
    """``<target>/<name>.inter`` (``write_inter(file)`` writes it) and ``<name>.summary.json`` with the
    seconds since ``started``: both files or neither. ``log`` gets the summary line. Returns the summary."""
    with AtomicFiles(target) as out:
        with out.open(f"{name}.inter") as f:
            write_inter(f)
        summary["seconds"] = round(time.perf_counter() - started, 2)
        with out.open(f"{name}.summary.json") as f:
            write_json(f, summary, indent=2, end="\n")
    if log:
        log(format_summary(summary))
    return summary


def format_summary(summary):
    """One human line: users, items, interactions, density, and the duplicate rows dropped, if any."""
    duplicates = summary.get("duplicates_dropped", 0)
    return (f"{summary['dataset']}: {summary['users']:,} users, {summary['items']:,} items, "
            f"{summary['interactions']:,} interactions, density {summary['density']:.4%}"
            + (f" -> {summary['inter_file']}" if "inter_file" in summary else "")
            + (f"; {duplicates:,} duplicate user-item {'row' if duplicates == 1 else 'rows'} dropped (the last row "
               "of each pair kept)" if duplicates else ""))
