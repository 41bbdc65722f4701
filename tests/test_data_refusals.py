"""The data tools refuse or repair bad values in the open (issue 31, item 4): ``python -m recbole_beta data
convert`` and ``synthetic`` on tiny real files, each refusal one ``recbole-beta: ...`` line, each repair
counted in the printed summary."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from recbole_beta.data_cli import main


def write(path, text, encoding="utf-8"):
    path.write_text(text, encoding=encoding)
    return path


def convert(capsys, src, *options):
    """Run ``convert SRC --format csv --user-col user --item-col item OPTIONS``; (exit code, stdout, stderr)."""
    code = main(["convert", str(src), "--format", "csv", "--user-col", "user", "--item-col", "item",
                 "--out", str(src.parent / "out"), *options])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(code, err, *fragments):
    assert code == 2 and err.startswith("recbole-beta: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def inter(src, name=None):
    name = name or src.stem
    return pd.read_csv(src.parent / "out" / name / f"{name}.inter", sep="\t", dtype=str)


# ---------------------------------------------------------------- convert: ratings, duplicates, the header

def test_a_negative_rating_is_refused_unless_the_threshold_drops_it(tmp_path, capsys):
    src = write(tmp_path / "neg.csv", "user,item,rating\nu1,i1,5\nu1,i2,-3\nu2,i1,4\n")
    code, _, err = convert(capsys, src, "--rating-col", "rating")
    refused(code, err, "neg.csv:3:", "negative rating", "--min-rating")
    assert not (tmp_path / "out").exists()
    code, out, err = convert(capsys, src, "--rating-col", "rating", "--min-rating", "1")
    assert code == 0, err
    assert inter(src).values.tolist() == [["u1", "i1", "5.0"], ["u2", "i1", "4.0"]]


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity", "1e999"])
def test_an_infinite_rating_is_refused_like_a_nan_one(tmp_path, capsys, value):
    src = write(tmp_path / "inf.csv", f"user,item,rating\nu1,i1,5\nu2,i1,{value}\n")
    code, _, err = convert(capsys, src, "--rating-col", "rating")
    refused(code, err, "inf.csv:3:", "is not a finite number", value)


def test_an_infinite_timestamp_is_refused(tmp_path, capsys):
    src = write(tmp_path / "ts.csv", "user,item,ts\nu1,i1,5\nu2,i1,inf\n")
    code, _, err = convert(capsys, src, "--time-col", "ts")
    refused(code, err, "ts.csv:3:", "(timestamp ", " is not a finite number): 'u2,i1,inf'")


def test_duplicate_user_item_rows_keep_the_last_and_say_how_many_went(tmp_path, capsys):
    # 3 users x 2 items, 7 rows: the "density 116.67%"
    src = write(tmp_path / "dup.csv", "user,item,rating\nu1,i1,5\nu1,i2,3\nu2,i1,4\nu2,i2,4\n"
                                      "u3,i1,1\nu3,i1,2\nu3,i1,3\n")
    code, out, err = convert(capsys, src, "--rating-col", "rating")
    assert code == 0, err
    assert "6 interactions" not in out and "5 interactions" in out and "density 83.3333%" in out, out
    assert "2 duplicate user-item rows dropped (the last row of each pair kept)" in out, out
    rows = inter(src).values.tolist()
    assert rows == [["u1", "i1", "5.0"], ["u1", "i2", "3.0"], ["u2", "i1", "4.0"], ["u2", "i2", "4.0"],
                    ["u3", "i1", "3.0"]]
    summary = json.loads((tmp_path / "out" / "dup" / "dup.summary.json").read_text())
    assert summary["duplicates_dropped"] == 2 and summary["density"] <= 1


def test_duplicates_are_counted_before_the_interaction_filters(tmp_path, capsys):
    # u1 has i1 three times: one interaction, so --min-user-inter 2 drops u1
    src = write(tmp_path / "dupf.csv", "user,item\nu1,i1\nu1,i1\nu1,i1\nu2,i1\nu2,i2\n")
    code, out, err = convert(capsys, src, "--min-user-inter", "2")
    assert code == 0, err
    assert inter(src).values.tolist() == [["u2", "i1"], ["u2", "i2"]]


def test_a_byte_order_mark_is_read_as_the_encoding(tmp_path, capsys):
    src = write(tmp_path / "bom.csv", "user,item,rating\nu1,i1,5\nu2,i1,4\n", encoding="utf-8-sig")
    assert src.read_bytes().startswith(b"\xef\xbb\xbf")
    code, out, err = convert(capsys, src, "--rating-col", "rating")
    assert code == 0, err
    assert inter(src).values.tolist() == [["u1", "i1", "5.0"], ["u2", "i1", "4.0"]]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_rating_threshold_is_refused(tmp_path, capsys, value):
    src = write(tmp_path / "r.csv", "user,item,rating\nu1,i1,5\n")
    code, _, err = convert(capsys, src, "--rating-col", "rating", f"--min-rating={value}")
    refused(code, err, "--min-rating", "finite")


@pytest.mark.parametrize("options, fragment", [
    (["--item-col", "user"], "--user-col and --item-col name the same column 'user'"),
    (["--rating-col", "item"], "--item-col and --rating-col name the same column 'item'"),
    (["--no-header", "--user-col", "-1", "--item-col", "1"], "--user-col=-1: a position must be >= 0"),
    (["--no-header", "--user-col", "0", "--item-col", "0"], "--user-col and --item-col name the same column 0"),
    (["--name", ""], "bad dataset name ''"),
])
def test_columns_and_names_that_cannot_be_right_are_refused(tmp_path, capsys, options, fragment):
    src = write(tmp_path / "c.csv", "user,item,rating\nu1,i1,5\nu2,i1,4\n")
    code, _, err = convert(capsys, src, *options)
    refused(code, err, fragment)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- synthetic

def synthetic(capsys, tmp_path, *options):
    code = main(["synthetic", "--users", "10", "--items", "10", "--out", str(tmp_path / "out"), *options])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("option, value, fragment", [
    ("--density", "nan", "density=nan"),
    ("--density", "inf", "density=inf"),
    ("--density", "-0.1", "density=-0.1"),
    ("--item-exponent", "nan", "item_exponent=nan"),
    ("--item-exponent", "inf", "item_exponent=inf"),
    ("--user-exponent", "nan", "user_exponent=nan"),
    ("--user-exponent", "inf", "user_exponent=inf"),
    ("--user-exponent", "2000", "user_exponent=2000"),  # 2 ** -2000 is 0.0 in float64
    ("--item-exponent", "400", "item_exponent=400"),
])
def test_synthetic_refuses_non_finite_or_unusable_exponents_and_densities(tmp_path, capsys, option, value, fragment):
    extra = [] if option == "--density" else ["--density", "0.9"]
    code, _, err = synthetic(capsys, tmp_path, option, value, *extra)
    refused(code, err, fragment)
    assert not (tmp_path / "out").exists()


def test_synthetic_refuses_a_negative_seed(tmp_path, capsys):
    code, _, err = synthetic(capsys, tmp_path, "--density", "0.5", "--seed", "-1")
    refused(code, err, "seed=-1")


def test_synthetic_refuses_an_empty_name(tmp_path, capsys):
    code, _, err = synthetic(capsys, tmp_path, "--density", "0.5", "--name", "")
    refused(code, err, "bad dataset name ''")


def test_a_steep_item_exponent_finishes(tmp_path):
    # each user needs 20 distinct items of which rank 20 is drawn with weight 20 ** -5: drawn with
    # replacement, the sampler kept doubling its draws for ever
    proc = subprocess.run([sys.executable, "-m", "recbole_beta", "data", "synthetic", "--users", "1000", "--items",
                           "1000", "--density", "0.02", "--item-exponent", "5", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    frame = pd.read_csv(tmp_path / "out" / "synthetic" / "synthetic.inter", sep="\t")
    assert len(frame) == 20_000 and not frame.duplicated(["user_id:token", "item_id:token"]).any()


def overcommits():
    try:
        return open("/proc/sys/vm/overcommit_memory").read().strip() == "1"
    except OSError:
        return True  # unknown: do not ask for terabytes


@pytest.mark.skipif(overcommits(), reason="the kernel would grant the terabytes and the fill would exhaust memory")
def test_a_shape_beyond_memory_ends_in_one_line(tmp_path, capsys):
    code, _, err = synthetic(capsys, tmp_path, "--users", "1e12", "--density", "0.5")
    refused(code, err, "out of memory", "fewer users")


def test_a_folder_given_as_a_csv_file_is_named_a_folder(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    code, _, err = convert(capsys, tmp_path / "in")
    refused(code, err, "a directory: give the file in it")
