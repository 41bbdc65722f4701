"""Converter: raw MovieLens / CSV files -> RecBole atomic .inter (real files in tmp_path)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from recbole_beta.data import ConversionError, Filters, generic_layout
from recbole_beta.data.convert import convert
from recbole_beta.data_cli import main

REPO = Path(__file__).resolve().parent.parent
HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"

ML100K = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n196\t377\t5\t881251000\n"
ML1M = "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
ML10M = "1::122::5::838985046\n1::185::4.5::838983525\n2::122::0.5::868245777\n"
ML20M = ("userId,movieId,rating,timestamp\n"
         "1,2,3.5,1112486027\n1,29,3.5,1112484676\n2,2,4.0,974820889\n3,29,5.0,1112484819\n")


def write(path, text):
    """Write ``text`` to ``path`` (parents created) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def read_inter(out, name):
    """The .inter file's header line and rows (all as strings)."""
    path = out / name / f"{name}.inter"
    header = path.read_text(encoding="utf-8").split("\n", 1)[0]
    return header, pd.read_csv(path, sep="\t", dtype=str).values.tolist()


def error_of(tmp_path, *args, **kwargs):
    """The message of the ConversionError that ``convert`` raises."""
    with pytest.raises(ConversionError) as info:
        convert(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- formats

def test_ml100k_udata(tmp_path):
    src = write(tmp_path / "ml-100k" / "u.data", ML100K)
    summary = convert(src, tmp_path / "out")
    # RecBole always uses its bundled ml-100k for that name, so the default differs.
    assert summary["dataset"] == "ml-100k-converted"
    header, rows = read_inter(tmp_path / "out", "ml-100k-converted")
    assert header == HEADER
    assert rows == [["196", "242", "3.0", "881250949"], ["186", "302", "3.0", "891717742"],
                    ["22", "377", "1.0", "878887116"], ["196", "377", "5.0", "881251000"]]
    assert (summary["users"], summary["items"], summary["interactions"]) == (3, 3, 4)
    assert summary["density"] == pytest.approx(4 / 9)


@pytest.mark.parametrize("fmt,text,ratings", [("ml-1m", ML1M, ["5.0", "3.0", "4.0"]),
                                              ("ml-10m", ML10M, ["5.0", "4.5", "0.5"])])
def test_ratings_dat(tmp_path, fmt, text, ratings):
    src = write(tmp_path / "ratings.dat", text)
    summary = convert(src, tmp_path / "out", fmt=fmt)
    header, rows = read_inter(tmp_path / "out", fmt)
    assert header == HEADER
    assert [r[2] for r in rows] == ratings
    assert rows[0] == [text.split("::")[0], *text.split("\n")[0].split("::")[1:2],
                       ratings[0], text.split("\n")[0].split("::")[3]]
    assert (summary["users"], summary["items"], summary["interactions"]) == (2, 2, 3)


@pytest.mark.parametrize("fmt", ["ml-20m", "ml-25m", "ml-latest", "ml-latest-small"])
def test_ratings_csv(tmp_path, fmt):
    src = write(tmp_path / fmt / "ratings.csv", ML20M)
    summary = convert(src, tmp_path / "out", fmt=fmt)
    header, rows = read_inter(tmp_path / "out", fmt)
    assert header == HEADER
    assert rows == [["1", "2", "3.5", "1112486027"], ["1", "29", "3.5", "1112484676"],
                    ["2", "2", "4.0", "974820889"], ["3", "29", "5.0", "1112484819"]]
    assert (summary["users"], summary["items"], summary["interactions"]) == (3, 2, 4)


def test_extracted_directory_and_auto_format(tmp_path):
    write(tmp_path / "ml-1m" / "ratings.dat", ML1M)
    summary = convert(tmp_path / "ml-1m", tmp_path / "out", name="one")
    assert summary["format"] == "ml-1m" and summary["interactions"] == 3
    assert (tmp_path / "out" / "one" / "one.inter").is_file()


def test_generic_csv_named_columns_keeps_string_ids(tmp_path):
    src = write(tmp_path / "clicks.csv",
                "ts;sku;who;stars;extra\n10;007;ann;4.5;x\n11;7;bob;2;y\n12;007;bob;3;z\n")
    layout = generic_layout(sep=";", user="who", item="sku", rating="stars", timestamp="ts")
    summary = convert(src, tmp_path / "out", fmt="csv", layout=layout)
    assert summary["dataset"] == "clicks"
    header, rows = read_inter(tmp_path / "out", "clicks")
    assert header == HEADER
    assert rows == [["ann", "007", "4.5", "10"], ["bob", "7", "2.0", "11"],
                    ["bob", "007", "3.0", "12"]]
    assert (summary["users"], summary["items"]) == (2, 2)


def test_generic_tsv_without_header_or_rating(tmp_path):
    src = write(tmp_path / "plays.tsv", "u1\ti1\tjunk\nu1\ti2\tjunk\nu2\ti1\tjunk\n")
    layout = generic_layout(sep="\t", user=0, item=1, header=False)
    convert(src, tmp_path / "out", name="plays", fmt="csv", layout=layout)
    header, rows = read_inter(tmp_path / "out", "plays")
    assert header == "user_id:token\titem_id:token"
    assert rows == [["u1", "i1"], ["u1", "i2"], ["u2", "i1"]]


def test_generic_multi_character_separator(tmp_path):
    src = write(tmp_path / "x.txt", "user||item||when\na||b||5\nc||d||6\n")
    layout = generic_layout(sep="||", user="user", item="item", timestamp="when")
    convert(src, tmp_path / "out", fmt="csv", layout=layout)
    header, rows = read_inter(tmp_path / "out", "x")
    assert header == "user_id:token\titem_id:token\ttimestamp:float"
    assert rows == [["a", "b", "5"], ["c", "d", "6"]]


def test_blank_lines_are_skipped(tmp_path):
    src = write(tmp_path / "u.data", "1\t1\t5\t1\n\n2\t2\t4\t2\n\n")
    assert convert(src, tmp_path / "out", name="b")["interactions"] == 2


@pytest.mark.parametrize("chunksize", [1, 2, 3])
def test_chunk_size_does_not_change_output(tmp_path, chunksize):
    # String ids first seen in later chunks; timestamps that outgrow int32, then floats.
    text = ("u,i,t\nann,007,1\nbob,7,2\nann,7,3000000000\ncid,007,4.5\nbob,x,5\n")
    src = write(tmp_path / "c.csv", text)
    layout = generic_layout(user="u", item="i", timestamp="t")
    convert(src, tmp_path / "big", name="d", fmt="csv", layout=layout, chunksize=1000)
    convert(src, tmp_path / "small", name="d", fmt="csv", layout=layout, chunksize=chunksize)
    big = (tmp_path / "big" / "d" / "d.inter").read_bytes()
    assert (tmp_path / "small" / "d" / "d.inter").read_bytes() == big
    assert big.decode().splitlines()[1:] == ["ann\t007\t1.0", "bob\t7\t2.0",
                                             "ann\t7\t3000000000.0", "cid\t007\t4.5",
                                             "bob\tx\t5.0"]


# ---------------------------------------------------------------- filters

def test_rating_threshold_keeps_greater_or_equal(tmp_path):
    src = write(tmp_path / "ratings.csv", ML20M)
    summary = convert(src, tmp_path / "out", name="t", filters=Filters(min_rating=4.0))
    _, rows = read_inter(tmp_path / "out", "t")
    assert rows == [["2", "2", "4.0", "974820889"], ["3", "29", "5.0", "1112484819"]]
    assert summary["rows_read"] == 4 and summary["rows_after_rating_filter"] == 2


# users a..e, items x..z; items are filtered before users, as in Liang et al.'s code.
COUNTS = "u,i\na,x\na,y\na,z\nb,x\nb,y\nc,x\nd,x\nd,w\ne,w\n"


def test_min_user_filter_single_pass(tmp_path):
    src = write(tmp_path / "c.csv", COUNTS)
    layout = generic_layout(user="u", item="i")
    summary = convert(src, tmp_path / "out", fmt="csv", layout=layout,
                      filters=Filters(min_user_inter=2))
    # c and e have one interaction each.
    _, rows = read_inter(tmp_path / "out", "c")
    assert rows == [["a", "x"], ["a", "y"], ["a", "z"], ["b", "x"], ["b", "y"],
                    ["d", "x"], ["d", "w"]]
    assert (summary["users"], summary["items"], summary["filter_passes"]) == (3, 4, 1)


def test_min_item_then_min_user_single_pass(tmp_path):
    src = write(tmp_path / "c.csv", COUNTS)
    layout = generic_layout(user="u", item="i")
    summary = convert(src, tmp_path / "out", fmt="csv", layout=layout,
                      filters=Filters(min_user_inter=2, min_item_inter=2))
    # Item z (1) goes first; then c (1), e (1) go; a keeps x,y; w now has 1 but one pass only.
    _, rows = read_inter(tmp_path / "out", "c")
    assert rows == [["a", "x"], ["a", "y"], ["b", "x"], ["b", "y"], ["d", "x"], ["d", "w"]]
    assert (summary["users"], summary["items"], summary["interactions"]) == (3, 3, 6)


def test_k_core_iterates_until_stable(tmp_path):
    # One pass (items, then users, min 2) only drops D; that leaves z with one
    # interaction, dropping z leaves C with one, and only then is it stable.
    src = write(tmp_path / "k.csv", "u,i\nA,x\nA,y\nB,x\nB,y\nC,y\nC,z\nD,z\n")
    layout = generic_layout(user="u", item="i")
    one_pass = convert(src, tmp_path / "out", name="one", fmt="csv", layout=layout,
                       filters=Filters(min_user_inter=2, min_item_inter=2))
    assert (one_pass["users"], one_pass["items"], one_pass["interactions"]) == (3, 3, 6)
    core = convert(src, tmp_path / "out", name="core", fmt="csv", layout=layout,
                   filters=Filters(min_user_inter=2, min_item_inter=2, k_core=True))
    _, rows = read_inter(tmp_path / "out", "core")
    assert rows == [["A", "x"], ["A", "y"], ["B", "x"], ["B", "y"]]
    assert (core["users"], core["items"], core["interactions"]) == (2, 2, 4)
    assert core["filter_passes"] == 3  # two passes that removed rows, one that found none
    assert core["density"] == 1.0


def test_summary_json_beside_inter(tmp_path):
    src = write(tmp_path / "ratings.csv", ML20M)
    convert(src, tmp_path / "out", name="s", filters=Filters(min_rating=3.5, min_user_inter=2))
    summary = json.loads((tmp_path / "out" / "s" / "s.summary.json").read_text())
    assert summary["dataset"] == "s"
    assert (summary["users"], summary["items"], summary["interactions"]) == (1, 2, 2)
    assert summary["density"] == 1.0
    assert summary["filters"] == {"min_rating": 3.5, "min_user_inter": 2, "min_item_inter": 0,
                                  "k_core": False}


def test_multvae_cli_preset(tmp_path, capsys):
    rows = ["userId,movieId,rating,timestamp"]
    rows += [f"1,{i},4.0,{i}" for i in range(5)]            # kept: 5 ratings >= 4
    rows += [f"2,{i},{r},{i}" for i, r in enumerate([4.0, 4.5, 5.0, 3.5, 3.5, 3.5])]  # 3 >= 4
    src = write(tmp_path / "ml-20m" / "ratings.csv", "\n".join(rows) + "\n")
    assert main(["convert", str(src), "--multvae", "--out", str(tmp_path / "out")]) == 0
    assert "ml-20m: 1 users, 5 items, 5 interactions, density 100.0000%" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "ml-20m" / "ml-20m.summary.json").read_text())
    assert summary["filters"] == {"min_rating": 4.0, "min_user_inter": 5, "min_item_inter": 0,
                                  "k_core": False}


# ---------------------------------------------------------------- RecBole can load it

def test_recbole_loads_converted_dataset(tmp_path):
    from recbole.config import Config
    from recbole.data import create_dataset

    lines = [f"{u}::{i}::{1 + (u + i) % 5}::{1000 + u * 100 + i}"
             for u in range(1, 21) for i in range(1, 31) if (u * 7 + i * 3) % 4 != 0]
    src = write(tmp_path / "raw" / "ratings.dat", "\n".join(lines) + "\n")
    out = tmp_path / "dataset"
    summary = convert(src, out, name="tiny-ml", filters=Filters(min_rating=3))
    config = Config(model="Pop", dataset="tiny-ml", config_dict={
        "data_path": str(out), "checkpoint_dir": str(tmp_path / "saved"),
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
        "show_progress": False, "save_dataset": False})
    dataset = create_dataset(config)
    # RecBole adds one padding id to users and items.
    assert dataset.user_num - 1 == summary["users"]
    assert dataset.item_num - 1 == summary["items"]
    assert dataset.inter_num == summary["interactions"]
    assert set(dataset.inter_feat.columns) == {"user_id", "item_id", "rating", "timestamp"}


# ---------------------------------------------------------------- atomic output

def test_failed_conversion_leaves_existing_output_untouched(tmp_path):
    out = tmp_path / "out"
    good = write(tmp_path / "good" / "ratings.csv", ML20M)
    convert(good, out, name="d")
    before = {p.name: p.read_bytes() for p in (out / "d").iterdir()}
    # The bad row comes after several chunks have been read.
    bad_text = ML20M + "".join(f"9,{i},4.0,{i}\n" for i in range(20)) + "9,99,four,1\n"
    bad = write(tmp_path / "bad" / "ratings.csv", bad_text)
    with pytest.raises(ConversionError, match=r"ratings\.csv:26: "):
        convert(bad, out, name="d", chunksize=3)
    assert {p.name: p.read_bytes() for p in (out / "d").iterdir()} == before


def test_successful_conversion_replaces_output_without_leftovers(tmp_path):
    out = tmp_path / "out"
    convert(write(tmp_path / "a" / "ratings.csv", ML20M), out, name="d")
    convert(write(tmp_path / "b" / "ratings.dat", ML1M), out, name="d")
    assert sorted(p.name for p in (out / "d").iterdir()) == ["d.inter", "d.summary.json"]
    assert read_inter(out, "d")[1][0] == ["1", "1193", "5.0", "978300760"]


def test_no_output_directory_when_input_is_bad(tmp_path):
    src = write(tmp_path / "ratings.csv", "userId,movieId\n1,2\n")
    with pytest.raises(ConversionError):
        convert(src, tmp_path / "out", name="d")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- bad input

def test_missing_columns(tmp_path):
    src = write(tmp_path / "ratings.csv", "userId,movieId,ts\n1,2,3\n")
    message = error_of(tmp_path, src, tmp_path / "out")
    assert message == (f"{src}: missing column(s) 'rating', 'timestamp'; the header has "
                       "'userId', 'movieId', 'ts' (separator ',')")


def test_missing_generic_column(tmp_path):
    src = write(tmp_path / "c.tsv", "user\tthing\n1\t2\n")
    layout = generic_layout(sep="\t", user="user", item="item")
    assert "missing column(s) 'item'" in error_of(tmp_path, src, tmp_path / "o", fmt="csv",
                                                  layout=layout)


@pytest.mark.parametrize("name,text,fmt,expected", [
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,1\n1,3,abc,2\n", None,
     "ratings.csv:3: unparsable row (rating 'abc' is not a number): '1,3,abc,2'"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,1\n1,3,4\n", None,
     "ratings.csv:3: unparsable row (missing timestamp): '1,3,4'"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,1\n\nx,3,4,5\n", None,
     "ratings.csv:4: unparsable row (user id 'x' is not an integer): 'x,3,4,5'"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,1\n1,3,4,5,6\n", None,
     "ratings.csv:3: unparsable row (expected 4 fields, saw 5): '1,3,4,5,6'"),
    ("ratings.dat", "1::2::3::4\n1::2::3::4::5\n", "ml-1m",
     "ratings.dat:2: unparsable row (expected 4 fields, saw 5): '1::2::3::4::5'"),
    ("ratings.dat", "1::2::3::4\n1::2:3::4\n", "ml-1m",
     "ratings.dat:2: unparsable row (fields must be separated by '::'): '1::2:3::4'"),
    ("u.data", "1\t2\t3\t4\n1\t2.5\t3\t4\n", None,
     "u.data:2: unparsable row (item id 2.5 is not an integer): '1\\t2.5\\t3\\t4'"),
    ("u.data", "1,2,3,4\n", None,
     "u.data:1: unparsable row (expected 4 fields, saw 1): '1,2,3,4'"),
])
def test_unparsable_rows_name_file_and_line(tmp_path, name, text, fmt, expected):
    src = write(tmp_path / name, text)
    message = error_of(tmp_path, src, tmp_path / "out", name="d", fmt=fmt)
    assert message == f"{tmp_path}/{expected}"


@pytest.mark.parametrize("chunksize", [1, 2, 1000])
def test_too_many_fields_found_at_any_chunk_position(tmp_path, chunksize):
    # pandas drops extra fields silently when the long row starts a chunk.
    src = write(tmp_path / "ratings.csv", ML20M + "1,2,3.5,4,extra\n5,6,4.0,7\n")
    message = error_of(tmp_path, src, tmp_path / "out", name="d", chunksize=chunksize)
    assert message.startswith(f"{src}:6: unparsable row (expected 4 fields, saw 5)")


def test_empty_after_filtering(tmp_path):
    src = write(tmp_path / "ratings.csv", ML20M)
    message = error_of(tmp_path, src, tmp_path / "out", name="d",
                       filters=Filters(min_rating=4.0, min_user_inter=2))
    assert message == (f"{src}: no interactions left after filtering (4 rows read; "
                       "min_rating=4.0, min_user_inter=2, min_item_inter=0, k_core=False)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text,expected", [("", "file is empty"),
                                           ("userId,movieId,rating,timestamp\n",
                                            "no interactions in the file")])
def test_empty_input(tmp_path, text, expected):
    src = write(tmp_path / "ratings.csv", text)
    assert error_of(tmp_path, src, tmp_path / "out") == f"{src}: {expected}"


def test_missing_file_and_unknown_name(tmp_path):
    assert error_of(tmp_path, tmp_path / "nope.csv", tmp_path / "o", fmt="ml-20m") == \
        f"{tmp_path / 'nope.csv'}: no such file"
    src = write(tmp_path / "data.txt", "a,b\n")
    assert "cannot tell the format" in error_of(tmp_path, src, tmp_path / "o")


def test_threshold_without_rating_column(tmp_path):
    src = write(tmp_path / "c.csv", "u,i\n1,2\n")
    message = error_of(tmp_path, src, tmp_path / "o", fmt="csv",
                       layout=generic_layout(user="u", item="i"), filters=Filters(min_rating=1))
    assert "no rating column" in message


# ---------------------------------------------------------------- command line

def run_cli(*args, cwd):
    """Run ``python -m recbole_beta data`` in a child process."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.run([sys.executable, "-m", "recbole_beta", "data", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_bad_input_prints_one_line_and_exits_2(tmp_path):
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,1\n1,3,abc,2\n")
    proc = run_cli("convert", "ratings.csv", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == ("recbole-beta: ratings.csv:3: unparsable row (rating 'abc' is not a number): "
                           "'1,3,abc,2'\n")


@pytest.mark.slow
def test_cli_convert_generic_and_help(tmp_path):
    write(tmp_path / "c.tsv", "uid\tsku\n1\ta\n2\tb\n")
    proc = run_cli("convert", "c.tsv", "--format", "csv", "--sep", "tab", "--user-col", "uid",
                   "--item-col", "sku", "--out", "out", "--name", "c", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("c: 2 users, 2 items, 2 interactions")
    assert read_inter(tmp_path / "out", "c")[1] == [["1", "a"], ["2", "b"]]
    help_text = run_cli("convert", "--help", cwd=tmp_path)
    assert help_text.returncode == 0 and "--min-user-inter" in help_text.stdout


def test_cli_no_header_defaults_to_first_two_columns(tmp_path, capsys):
    src = write(tmp_path / "pairs.txt", "a b\nc d\n")
    assert main(["convert", str(src), "--format", "csv", "--sep", "space", "--no-header",
                 "--out", str(tmp_path / "o")]) == 0
    assert read_inter(tmp_path / "o", "pairs")[1] == [["a", "b"], ["c", "d"]]


def test_cli_rejects_generic_options_for_movielens(tmp_path, capsys):
    src = write(tmp_path / "ratings.csv", ML20M)
    assert main(["convert", str(src), "--sep", ";", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == ("recbole-beta: --sep only applies to --format csv "
                                       "(the MovieLens formats have a fixed layout)\n")
