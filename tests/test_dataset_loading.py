"""The plugin's dataset (pandas' C parser where it reads as RecBole does) equals RecBole's own, field for field.

Each case builds RecBole's ``create_dataset`` result and :class:`PluginDataset` from the same config
and compares every column of every feature table (floats bit for bit, NaN included), the token
maps and the counts; a spy on the C-parser read says which files it served, so a case that should
read with the C parser cannot pass by falling back to RecBole's read, and one that must fall back
cannot pass by luck.
"""

import numpy as np
import pytest
import torch
from recbole.data import create_dataset as recbole_create_dataset
from recbole.data.dataset import Dataset

import recbole_beta.data.dataset as plugin_dataset
from recbole_beta.config import Config
from recbole_beta.data.dataset import PluginDataset, builds_plain_dataset, create_dataset

MODEL = "AnnealedBetaMultVAE"
FEATS = ("inter_feat", "user_feat", "item_feat")


@pytest.fixture
def c_reads(monkeypatch):
    """File name -> whether the C parser's read was used, for every file offered to it."""
    served = {}
    read = plugin_dataset.read_atomic_with_c_parser

    def spy(path, *args):
        df = read(path, *args)
        served[path.rsplit("/", 1)[-1]] = df is not None
        return df

    monkeypatch.setattr(plugin_dataset, "read_atomic_with_c_parser", spy)
    return served


def same_cells(a, b):
    """Equal values of the same types; floats bit for bit (NaN == NaN), arrays (seq fields) by value and dtype."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape):
            return False
        return np.array_equal(a.view(np.int64), b.view(np.int64)) if a.dtype == np.float64 else np.array_equal(a, b)
    if isinstance(a, float) and isinstance(b, float):
        return np.float64(a).view(np.int64) == np.float64(b).view(np.int64)
    return type(a) is type(b) and a == b


def assert_same_dataset(expected, actual):
    assert type(expected)._load_feat is Dataset._load_feat and type(actual)._load_feat is PluginDataset._load_feat
    for name in FEATS:
        want, got = getattr(expected, name), getattr(actual, name)
        assert (want is None) == (got is None), name
        if want is None:
            continue
        assert list(want.columns) == list(got.columns), name
        assert want.index.equals(got.index), name
        for column in want.columns:
            w, g = want[column].to_numpy(), got[column].to_numpy()
            assert w.dtype == g.dtype, (name, column)
            if w.dtype == np.float64:
                assert np.array_equal(w.view(np.int64), g.view(np.int64)), (name, column)
            elif w.dtype == object:
                bad = [i for i, (x, y) in enumerate(zip(w, g)) if not same_cells(x, y)]
                assert not bad, (name, column, [(w[i], g[i]) for i in bad[:5]])
            else:
                assert np.array_equal(w, g), (name, column)
        # and the tensors RecBole trains on
        w, g = expected._dataframe_to_interaction(want), actual._dataframe_to_interaction(got)
        for column in w.columns:
            assert w[column].dtype == g[column].dtype and torch.equal(w[column], g[column]), (name, column)
    assert expected.field2id_token.keys() == actual.field2id_token.keys()
    for field, tokens in expected.field2id_token.items():
        assert tokens.dtype == actual.field2id_token[field].dtype
        assert tokens.tolist() == actual.field2id_token[field].tolist(), field
    assert expected.field2token_id == actual.field2token_id
    assert expected.field2type == actual.field2type
    assert expected.field2source == actual.field2source
    assert expected.field2seqlen == actual.field2seqlen
    assert expected.field2bucketnum == actual.field2bucketnum
    for count in ("user_num", "item_num", "inter_num"):
        assert getattr(expected, count) == getattr(actual, count), count


def both(config):
    """RecBole's dataset and the plugin's. Every file here is one RecBole reads: where RecBole's read raises, the
    test fails (saying whether the plugin's raises the same), it is not skipped."""
    try:
        expected = recbole_create_dataset(config)
    except Exception as error:  # noqa: BLE001 - any of RecBole's errors
        try:
            PluginDataset(config)
        except Exception as plugin_error:  # noqa: BLE001
            alike = type(plugin_error) is type(error) and str(plugin_error) == str(error)
            how = "fails alike" if alike else f"fails otherwise ({type(plugin_error).__name__}: {plugin_error})"
            pytest.fail(f"RecBole cannot read the test's files ({type(error).__name__}: {error}); the plugin's {how}")
        pytest.fail(f"RecBole cannot read the test's files ({type(error).__name__}: {error}); the plugin's reads them")
    return expected, PluginDataset(config)


# --- ml-100k, as RecBole ships it ---------------------------------------------------------------


ML100K_ALL_COLUMNS = {
    "inter": ["user_id", "item_id", "rating", "timestamp"],
    "user": ["user_id", "age", "gender", "occupation", "zip_code"],
    "item": ["item_id", "movie_title", "release_year", "class"],
}


@pytest.mark.parametrize("load_col", [None, ML100K_ALL_COLUMNS], ids=["plugin-default-columns", "every-column"])
def test_ml100k_equals_recbole(c_reads, load_col):
    config_dict = {"state": "WARNING"} | ({"load_col": load_col} if load_col else {})
    expected, actual = both(Config(model=MODEL, dataset="ml-100k", config_dict=config_dict))
    assert_same_dataset(expected, actual)
    if load_col:
        assert actual.user_feat is not None and actual.item_feat is not None
        # the .item file has token_seq fields: RecBole's read, never offered to the C parser
        assert c_reads == {"ml-100k.inter": True, "ml-100k.user": True}
    else:
        assert c_reads == {"ml-100k.inter": True}


# --- small written datasets with awkward cells --------------------------------------------------

#: cells both parsers read alike: inner and trailing spaces, empty cells, NA-like strings, non-ASCII,
#: blank floats, a long decimal (pandas' string-to-double and Python's float differ on it), blank lines
PLAIN_INTER = [
    "user_id:token\titem_id:token\trating:float\tnote:token\tstamp:float",
    "u1\ti1\t4.5\tplain\t881250949",
    "u1\ti2\t\ta b\t881250950",
    "u2\ti1\t3\tx \t",
    "u2\ti3\t4876475938242194.92411578156593877840801609753513933\tNA\t1.5",
    "",
    "u3\ti2\t0.1\t\t2",
    "u3\ti4\t2.25\tnull\t3e2",
    "u 4\ti1\t1e3\tN/A\t-7",
    "u 4\ti5\tnan\t#N/A\t0",
    "u5\ti1\t-2.5\té\t 12",
    "u5\ti2\t7\t-\t12 ",
    "\ti2\t1\tno user\t1",
    "u6\t\t1\tno item\t1",
    "u6\ti3\t0.30000000000000004\tn/a\t1",
    "u6\ti4\t\tNone\t",
]
PLAIN_USER = [
    "user_id:token\tage:float\tcity:token",
    "u1\t24\tParis",
    "u2\t\tSan Francisco",
    "u 4\t53.5\t",
    "u5\t31\tNA",
    "u9\t40\tnowhere",
]
PLAIN_ITEM = [
    "item_id:token\ttitle:token_seq\tyear:token\tscores:float_seq\tprice:float",
    "i1\tToy Story\t1995\t1.5 2\t9.99",
    "i2\t\t\t\t",
    "i3\tHeat  \t1995\t 3 \t",
    "i4\tNA\tNA\t4.25\t1",
]
LOAD_ALL = {
    "inter": ["user_id", "item_id", "rating", "note", "stamp"],
    "user": ["user_id", "age", "city"],
    "item": ["item_id", "title", "year", "scores", "price"],
}


def write_dataset(root, name, files, encoding="utf-8", newline="\n"):
    folder = root / name
    folder.mkdir(parents=True)
    for suffix, lines in files.items():
        (folder / f"{name}.{suffix}").write_bytes((newline.join(lines) + newline).encode(encoding))


def tiny_config(root, name, load_col=None, **extra):
    config_dict = {"data_path": str(root), "state": "ERROR", "load_col": load_col or {"inter": LOAD_ALL["inter"]}}
    return Config(model=MODEL, dataset=name, config_dict=config_dict | extra)


def test_awkward_cells_read_by_the_c_parser(tmp_path, c_reads):
    write_dataset(tmp_path, "awkward", {"inter": PLAIN_INTER, "user": PLAIN_USER, "item": PLAIN_ITEM})
    expected, actual = both(tiny_config(tmp_path, "awkward", LOAD_ALL))
    assert_same_dataset(expected, actual)
    # the seq fields send the .item file to RecBole's read; the others are the C parser's
    assert c_reads == {"awkward.inter": True, "awkward.user": True}
    # not vacuous: the empty and NA-like cells are RecBole's NaN ([PAD] once remapped), the blank floats filled
    assert actual.field2id_token["note"][0] == "[PAD]" and "" not in actual.field2id_token["note"].tolist()
    assert "NA" not in actual.field2id_token["note"].tolist() and "a b" in actual.field2id_token["note"].tolist()
    assert "x " in actual.field2id_token["note"].tolist() and "u 4" in actual.field2id_token["user_id"].tolist()
    # RecBole's parser reads the long decimal with pandas' string-to-double, not with Python's float
    assert 4876475938242194.0 in actual.inter_feat["rating"].tolist()
    assert float("4876475938242194.92411578156593877840801609753513933") == 4876475938242195.0


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["LF", "CRLF"])
def test_encodings_and_line_ends(tmp_path, c_reads, encoding, newline):
    write_dataset(tmp_path, "enc", {"inter": PLAIN_INTER, "user": PLAIN_USER}, encoding=encoding, newline=newline)
    config = tiny_config(tmp_path, "enc", {"inter": LOAD_ALL["inter"], "user": LOAD_ALL["user"]}, encoding=encoding)
    expected, actual = both(config)
    assert_same_dataset(expected, actual)
    assert c_reads == {"enc.inter": True, "enc.user": True}
    assert "é" in actual.field2id_token["note"].tolist()


def with_row(row):
    return PLAIN_INTER[:3] + [row] + PLAIN_INTER[3:]


#: files the C parser would read otherwise than RecBole's: each is offered to it and refused
REFUSED = {
    "quoted-cells": with_row('u7\ti1\t1\t"a\tb ""quoted"""\t1'),
    "quote-inside-a-cell": with_row('u7\ti1\t1\tsay "hi"\t1'),
    "missing-field": with_row("u7\ti1\t1\tshort"),
    "line-of-one-blank-field": with_row('""'),
    "extra-field": with_row("u7\ti1\t1\tlong\t1\textra"),
    "leading-blank": with_row(" u7\ti1\t1\tx\t1"),
    "negative-zero": [*PLAIN_INTER[:1], "u1\ti1\t-0\tx\t1", "u2\ti2\t5\ty\t2"],
    "integer-past-2**53": [*PLAIN_INTER[:1], "u1\ti1\t3562268002305705933\tx\t1", "u2\ti2\t5\ty\t2"],
    "float-the-c-parser-refuses": with_row("u7\ti1\t1e400\tx\t1_000"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_files_the_c_parser_reads_otherwise_fall_back(tmp_path, c_reads, case):
    write_dataset(tmp_path, "odd", {"inter": REFUSED[case]})
    expected, actual = both(tiny_config(tmp_path, "odd"))
    assert_same_dataset(expected, actual)
    assert c_reads == {"odd.inter": False}


def test_leading_blanks_at_the_c_parsers_block_edge(tmp_path, c_reads):
    """The C parser loses a line's leading blanks where they straddle the edge of the 256 KiB block it
    tokenizes: lines that start with a blank are RecBole's to read."""
    lines, size = ["user_id:token\titem_id:token"], 29
    while size < 262144 - 8:
        lines.append("u\tv")
        size += 4
    lines += [" " * 12 + "x\tq", "z\tw"]
    write_dataset(tmp_path, "edge", {"inter": lines})
    expected, actual = both(tiny_config(tmp_path, "edge", {"inter": ["user_id", "item_id"]}))
    assert_same_dataset(expected, actual)
    assert " " * 12 + "x" in actual.field2id_token["user_id"].tolist()
    assert c_reads == {"edge.inter": False}


@pytest.mark.parametrize("separator", ["::", ",", "|"])
def test_other_separators(tmp_path, c_reads, separator):
    """A separator of more than one character is a regular expression: RecBole's read, never offered to the C parser."""
    inter = [line.replace("\t", separator) for line in PLAIN_INTER if separator not in line]
    user = [line.replace("\t", separator) for line in PLAIN_USER]
    write_dataset(tmp_path, "sep", {"inter": inter, "user": user})
    load_col = {"inter": LOAD_ALL["inter"], "user": LOAD_ALL["user"]}
    expected, actual = both(tiny_config(tmp_path, "sep", load_col, field_separator=separator))
    assert_same_dataset(expected, actual)
    assert c_reads == ({} if len(separator) > 1 else {"sep.inter": True, "sep.user": True})


def test_token_seq_in_the_interactions_falls_back(tmp_path, c_reads):
    inter = ["user_id:token\titem_id:token\ttags:token_seq\tweights:float_seq"]
    inter += ["u1\ti1\ta b\t1 2.5", "u1\ti2\t\t", "u2\ti1\tb  c \t 3", "u2\ti3\tNA\tnan"]
    write_dataset(tmp_path, "seq", {"inter": inter})
    expected, actual = both(tiny_config(tmp_path, "seq", {"inter": ["user_id", "item_id", "tags", "weights"]}))
    assert_same_dataset(expected, actual)
    assert c_reads == {}


# --- which dataset a run builds -----------------------------------------------------------------


def test_create_dataset_builds_the_plugin_dataset_where_recbole_builds_a_plain_one(tmp_path):
    config = Config(model=MODEL, dataset="ml-100k", config_dict={"state": "ERROR"})
    assert builds_plain_dataset(config)
    assert type(create_dataset(config)) is PluginDataset
    assert not builds_plain_dataset(Config(model="KGAT", dataset="ml-100k", config_dict={"state": "ERROR"}))


def test_saved_datasets_stay_recboles(tmp_path):
    """``save_dataset`` saves RecBole's Dataset under the name RecBole loads it by, and a saved one is loaded."""
    config = Config(model=MODEL, dataset="ml-100k", config_dict={"state": "ERROR", "save_dataset": True})
    saved = create_dataset(config)
    assert type(saved) is Dataset
    assert (tmp_path / config["checkpoint_dir"] / "ml-100k-Dataset.pth").is_file()
    config = Config(model=MODEL, dataset="ml-100k", config_dict={"state": "ERROR"})
    loaded = create_dataset(config)
    assert type(loaded) is Dataset and loaded.inter_num == saved.inter_num


def test_the_held_out_dataset_is_unchanged(c_reads):
    """``eval_protocol: strong``: HeldOutDataset on the plugin's dataset draws the same split as on RecBole's."""
    from recbole_beta.data.heldout import HeldOutDataset

    recbole_based = type(
        "RecBoleHeldOutDataset",
        (HeldOutDataset,),
        # RecBole's own methods in place of every one PluginDataset overrides
        {name: getattr(Dataset, name) for name in vars(PluginDataset) if callable(getattr(Dataset, name, None))},
    )
    config_dict = {"eval_protocol": "strong", "heldout_users": 0.1, "state": "ERROR", "load_col": ML100K_ALL_COLUMNS}
    config = Config(model=MODEL, dataset="ml-100k", config_dict=config_dict)
    expected, actual = recbole_based(config), HeldOutDataset(config)
    assert c_reads == {"ml-100k.inter": True, "ml-100k.user": True}
    assert_same_dataset(expected, actual)
    assert np.array_equal(expected._roles, actual._roles)


def test_runs_use_the_plugin_dataset():
    import recbole_beta.quick_start as quick_start
    from recbole_beta.data.heldout import HeldOutDataset

    assert quick_start.create_dataset is create_dataset
    assert issubclass(HeldOutDataset, PluginDataset)
