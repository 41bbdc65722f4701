"""RecBole's Dataset, with its atomic files read by pandas' C parser where that reads them as RecBole does.

RecBole 1.2.1 reads every atomic file with ``pd.read_csv(..., engine="python")``
(``recbole.data.dataset.Dataset._load_feat``): one Python string object per cell, so building the
dataset of a 10M-row ``.inter`` file peaks at about 3 GB and takes 15-30 s. pandas' C parser reads
the same file in about a second and shares the repeated strings of each block it reads, but it
does not read every file as the Python parser does. :class:`PluginDataset` uses it only where the result is the
same DataFrame, and RecBole's own ``_load_feat`` everywhere else:

- the field separator is one ASCII character (longer ones are regular expressions, which only
  the Python parser reads), and the encoding is one in which that character is one byte that
  never occurs inside another character's bytes (UTF-8, ASCII, Latin-1, cp1252);
- every non-blank line has exactly as many separators as the header: the parsers differ on
  lines with missing fields (the Python parser gives ``None``, the C parser ``NaN``), on lines
  of one blank field (the Python parser drops them) and on lines with extra fields (the C parser
  ignores them when it reads some columns only); no line starts with a blank (the C parser's
  blank-line check can lose it at the edge of a block);
- no quote character (quoted fields can hold separators and line ends), no NUL byte (the C
  parser ends the cell there) and no carriage return outside a CRLF line end (the Python parser
  refuses one, the C parser ends the line);
- float fields: both parsers use pandas' own string-to-double, except where the Python parser
  reads a column as integers first (then ``-0`` is ``+0.0``, and integers past 2**53 are rounded
  from the integer) or falls back to Python's ``float`` (integers past 64 bits): a file whose
  floats hold a negative zero or a magnitude of 2**53 or more is read by RecBole;
- no ``token_seq`` / ``float_seq`` field: RecBole splits those after the read, and they live in
  the small ``.user`` / ``.item`` files, where the Python parser's cost does not matter;
- a value the C parser refuses (``1e400``, ``1_000``, ...) is left to RecBole's read, which
  reads some of them and raises its own error for the rest.

Empty cells and the ``NA``-like strings become ``NaN`` in both parsers (same default
``na_values``, ``keep_default_na`` and ``na_filter``).

:func:`create_dataset` is RecBole's ``create_dataset`` with :class:`PluginDataset` in place of
the plain ``Dataset``.
"""

import codecs
import importlib
import os
import tempfile

import numpy as np
import pandas as pd
from recbole.data import create_dataset as recbole_create_dataset
from recbole.data.dataset import Dataset
from recbole.utils import FeatureType, ModelType

#: encodings (as ``codecs`` names them) where an ASCII separator is one byte, never part of another character
_BYTE_SAFE_ENCODINGS = frozenset({"utf-8", "ascii", "iso8859-1", "cp1252"})
#: bytes after which the two parsers read a file differently (see the module's docstring)
_QUOTE, _NUL, _CR, _CRLF = b'"', b"\0", b"\r", b"\r\n"
_BLANKS = (ord(" "), ord("\t"))
_CHUNK_BYTES = 1 << 24
#: floats from here on may be integers the Python parser rounds otherwise (see the module's docstring)
_EXACT_INTEGERS = 2.0**53


def _plain_bytes(text):
    """No quote, no NUL, no CR outside a CRLF line end."""
    return _QUOTE not in text and _NUL not in text and text.count(_CR) == text.count(_CRLF)


def _plain_records(path, separator, n_fields):
    """The number of records of the file after its header, or None where the C parser could read it otherwise.

    A plain file: no quote, no NUL, no CR outside CRLF, and every non-blank line has ``n_fields - 1``
    separators and starts with a non-blank (or with the separator itself).
    """
    sep = ord(separator)
    records = 0
    with open(path, "rb") as f:
        if not _plain_bytes(f.readline()):  # the header
            return None
        while chunk := f.read(_CHUNK_BYTES):
            if not chunk.endswith(b"\n"):
                chunk += f.readline()  # whole lines only
            if not _plain_bytes(chunk):
                return None
            data = np.frombuffer(chunk, np.uint8)
            ends = np.flatnonzero(data == ord("\n"))
            if not len(ends) or ends[-1] != len(data) - 1:  # the last line has no line end
                ends = np.append(ends, len(data))
            starts = np.concatenate(([0], ends[:-1] + 1))
            lengths = ends - starts - (data[np.maximum(ends - 1, 0)] == ord("\r"))  # without CRLF's CR
            separators = np.diff(np.searchsorted(np.flatnonzero(data == sep), ends), prepend=0)
            lines = lengths > 0
            first = data[np.minimum(starts[lines], len(data) - 1)]
            if (separators[lines] != n_fields - 1).any() or (np.isin(first, _BLANKS) & (first != sep)).any():
                return None
            records += int(lines.sum())
    return records


def read_atomic_with_c_parser(path, usecols, dtype, separator, encoding, n_fields):
    """The ``pd.read_csv`` call of RecBole 1.2.1's ``Dataset._load_feat``, with ``engine="c"`` for its
    ``engine="python"``; None where the C parser could read ``path`` otherwise (see the module's docstring)."""
    records = _plain_records(path, separator, n_fields)
    if records is None:
        return None
    try:
        df = pd.read_csv(
            path,
            delimiter=separator,
            usecols=usecols,
            dtype=dtype,
            encoding=encoding,
            engine="c",
        )
    except ValueError:  # a value or byte the C parser refuses: RecBole's read decides
        return None
    if len(df) != records or not isinstance(df.index, pd.RangeIndex):
        return None
    for column in df.columns:
        values = df[column].to_numpy()
        if values.dtype == np.float64 and (
            np.signbit(values[values == 0]).any() or (np.abs(values[np.isfinite(values)]) >= _EXACT_INTEGERS).any()
        ):
            return None
    return df


def _c_parser_applies(separator, encoding):
    if not isinstance(separator, str) or len(separator) != 1 or not separator.isascii():
        return False
    if separator in '"\r\n\0':
        return False
    try:  # pandas reads the rows as UTF-8 where RecBole's encoding is None (its default)
        return codecs.lookup(encoding or "utf-8").name in _BYTE_SAFE_ENCODINGS
    except (LookupError, TypeError):
        return False


class PluginDataset(Dataset):
    """RecBole's Dataset, reading its atomic files with pandas' C parser where that gives RecBole's DataFrame."""

    def _load_feat(self, filepath, source):
        """RecBole's ``_load_feat``, with the C parser's read in place of the Python parser's where they agree.

        RecBole's own method does the header's bookkeeping (the fields' types, sources and lengths,
        ``load_col`` / ``unload_col``, its errors) on a copy of the header alone; then the rows are
        read here. Anything else is RecBole's own ``_load_feat``.
        """
        separator, encoding = self.config["field_separator"], self.config["encoding"]
        if not _c_parser_applies(separator, encoding):
            return super()._load_feat(filepath, source)
        with open(filepath, "rb") as f:
            header_bytes = f.readline()
        with open(filepath, encoding=encoding) as f:
            header = f.readline()[:-1]  # as RecBole's _load_feat reads it
        fields = header.split(separator)
        if (
            not _plain_bytes(header_bytes)  # else RecBole's text-mode readline may end the header elsewhere
            or len(fields) < 2
            or any(field.rpartition(":")[2].endswith("seq") for field in fields)
        ):
            return super()._load_feat(filepath, source)
        # RecBole's method reads a header from a path: a file holding the header alone gives its
        # bookkeeping and an empty DataFrame of the loaded columns with their dtypes
        with tempfile.TemporaryDirectory(prefix="recbole_beta-header-") as folder:
            header_only = os.path.join(folder, os.path.basename(filepath))
            with open(header_only, "wb") as f:
                f.write(header_bytes)
            empty = super()._load_feat(header_only, source)
        if empty is None:
            return None
        columns = list(empty.columns)
        loaded = set(columns)
        usecols = [field for field in fields if field.split(":")[0] in loaded]
        if [field.split(":")[0] for field in usecols] != columns:  # a field named twice in the header
            return super()._load_feat(filepath, source)
        dtype = {
            field: np.float64 if empty[column].dtype == np.float64 else str for field, column in zip(usecols, columns)
        }
        df = read_atomic_with_c_parser(filepath, usecols, dtype, separator, encoding, len(fields))
        if df is None:
            return super()._load_feat(filepath, source)
        df.columns = columns
        return df

    # Two transient copies RecBole makes of the interactions after the read, which set the build's
    # peak once the read is cheap (at ML-20M's shape, 10M rows: 80 MB of pointers per column each),
    # and cost nothing to skip:

    def _filter_inter_by_user_or_item(self):
        """RecBole's, skipped where there is no user or item feature to filter by: it would drop no row, but
        copy every column to drop none."""
        if self.user_feat is not None or self.item_feat is not None:
            super()._filter_inter_by_user_or_item()

    def _concat_remaped_tokens(self, remap_list):
        """RecBole's, without copying a token field that is remapped alone (``np.concatenate`` of one array)."""
        if len(remap_list) == 1 and remap_list[0][2] == FeatureType.TOKEN:
            feat, field, _ = remap_list[0]
            return feat[field].values, np.cumsum([len(feat)])[:-1]  # RecBole's split points of one array
        return super()._concat_remaped_tokens(remap_list)


def builds_plain_dataset(config):
    """Whether RecBole's ``create_dataset`` builds a plain ``recbole.data.dataset.Dataset`` for ``config``.

    Mirrors the class choice of ``recbole.data.utils.create_dataset`` (RecBole 1.2.1): a
    ``<model>Dataset`` class of ``recbole.data.dataset`` first, else by model type.
    """
    if hasattr(importlib.import_module("recbole.data.dataset"), config["model"] + "Dataset"):
        return False
    plain = {ModelType.GENERAL, ModelType.CONTEXT, ModelType.TRADITIONAL, ModelType.DECISIONTREE}
    return config["MODEL_TYPE"] in plain


def create_dataset(config):
    """RecBole's ``create_dataset``, with :class:`PluginDataset` where it would build a plain Dataset from scratch.

    A saved dataset (``dataset_save_path``, or RecBole's default file in ``checkpoint_dir``) and
    ``save_dataset: True`` stay RecBole's: it loads the file, or builds and saves a plain Dataset
    under the name it looks for next time.
    """
    if not builds_plain_dataset(config) or config["save_dataset"]:
        return recbole_create_dataset(config)
    default_file = os.path.join(config["checkpoint_dir"], f'{config["dataset"]}-{Dataset.__name__}.pth')
    if os.path.exists(config["dataset_save_path"] or default_file):
        return recbole_create_dataset(config)
    return PluginDataset(config)
