"""The reference code's split files (dawenl/vae_cf, Liang et al. 2018), read and written as they are.

Its preprocessing writes one folder: ``train.csv`` (training users), ``validation_tr.csv`` /
``validation_te.csv`` (validation users' fold-in / targets), ``test_tr.csv`` / ``test_te.csv``, each
with the header ``uid,sid``, and ``unique_sid.txt`` (the raw item ids; ``sid`` is a line number
in it, from 0). :func:`import_vae_cf` turns that folder into a RecBole atomic file whose
``protocol_role`` column carries the split, so ``eval_protocol: strong`` evaluates on exactly
those users, fold-in items and targets; :func:`export_vae_cf` writes a run-time split back in the
same layout, for other tools.
"""

import time
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_beta.data.convert import write_dataset
from recbole_beta.data.heldout import ROLES, TEST_IN, TEST_TARGET, TRAIN, VALID_IN, VALID_TARGET
from recbole_beta.data.parsing import ConversionError, not_utf8_error
from recbole_beta.files import AtomicFiles

#: file -> the role its rows have, in the order the reference code writes them
FILES = {
    "train.csv": TRAIN,
    "validation_tr.csv": VALID_IN,
    "validation_te.csv": VALID_TARGET,
    "test_tr.csv": TEST_IN,
    "test_te.csv": TEST_TARGET,
}
ITEMS_FILE = "unique_sid.txt"
HEADER = "uid,sid"


def _read_pairs(path, n_items):
    try:
        with path.open(encoding="utf-8") as f:
            first = f.readline().strip()
            f.read()  # the whole file decodes, or the line that does not is named below
    except UnicodeDecodeError:
        raise not_utf8_error(path) from None
    if first != HEADER:
        raise ConversionError(f"{path}:1: the header must be {HEADER!r}, found {first!r}")
    try:
        frame = pd.read_csv(path, dtype={"uid": str, "sid": str}, keep_default_na=False)
    except (pd.errors.ParserError, ValueError) as err:
        raise ConversionError(f"{path}: {err}") from None
    sid = pd.to_numeric(frame["sid"], errors="coerce")
    bad = sid.isna() | (sid < 0) | (sid >= n_items) | (sid % 1 != 0)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ConversionError(
            f"{path}:{row + 2}: sid {frame['sid'].iloc[row]!r} is not a line of {ITEMS_FILE} "
            f"(0 to {n_items - 1})"
        )
    if (frame["uid"] == "").any():
        row = int(np.flatnonzero((frame["uid"] == "").to_numpy())[0])
        raise ConversionError(f"{path}:{row + 2}: empty uid")
    return frame["uid"].to_numpy(), sid.to_numpy(dtype=np.int64)


def import_vae_cf(folder, out_dir, name, log=None):
    """Write ``<out_dir>/<name>/<name>.inter`` (user, item, protocol_role) from a vae_cf folder."""
    started = time.perf_counter()
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"{folder}: not a directory (want the folder the vae_cf preprocessing writes)")
    missing = [f for f in (*FILES, ITEMS_FILE) if not (folder / f).is_file()]
    if missing:
        raise ConversionError(
            f"{folder}: no {', '.join(missing)} (a vae_cf folder holds {', '.join((*FILES, ITEMS_FILE))})"
        )
    items = pd.read_csv(folder / ITEMS_FILE, header=None, dtype=str, keep_default_na=False)[0].to_numpy()
    if len(items) == 0:
        raise ConversionError(f"{folder / ITEMS_FILE}: empty")
    if len(set(items)) != len(items):
        raise ConversionError(f"{folder / ITEMS_FILE}: an item id appears twice")

    frames, users_of = [], {}
    for file, role in FILES.items():
        uid, sid = _read_pairs(folder / file, len(items))
        users_of[file] = set(uid)
        frames.append(pd.DataFrame({"user": uid, "item": items[sid], "role": ROLES[role]}))
    heldout = users_of["validation_tr.csv"] | users_of["test_tr.csv"]
    clash = users_of["train.csv"] & heldout or users_of["validation_tr.csv"] & users_of["test_tr.csv"]
    if clash:
        raise ConversionError(f"{folder}: uid {sorted(clash)[0]} is in two user groups (train, validation, test)")
    for file in ("train.csv", "validation_te.csv", "test_te.csv"):
        if not users_of[file]:
            what = "training rows" if file == "train.csv" else "targets"
            raise ConversionError(f"{folder / file}: holds no {what} (only its header): nothing to "
                                  f"{'train on' if file == 'train.csv' else 'evaluate'}")
    for tr, te in (("validation_tr.csv", "validation_te.csv"), ("test_tr.csv", "test_te.csv")):
        strays = users_of[te] - users_of[tr]
        if strays:
            raise ConversionError(f"{folder / te}: uid {sorted(strays)[0]} has targets but no rows in {tr}")
    data = pd.concat(frames, ignore_index=True)

    target = Path(out_dir) / name
    summary = {
        "dataset": name,
        "users": int(data["user"].nunique()),
        "items": len(items),
        "interactions": len(data),
        "density": len(data) / (data["user"].nunique() * len(items)),
        "source": str(folder),
        "format": "vae_cf",
        "split": {ROLES[role]: int((data["role"] == ROLES[role]).sum()) for role in FILES.values()},
        "users_per_group": {
            "train": len(users_of["train.csv"]),
            "valid": len(users_of["validation_tr.csv"]),
            "test": len(users_of["test_tr.csv"]),
        },
        "columns": ["user_id:token", "item_id:token", "protocol_role:token"],
        "inter_file": str(target / f"{name}.inter"),
        "use_with": "--eval_protocol=strong (the split is taken from the protocol_role column)",
    }

    def write_inter(f):
        f.write("\t".join(summary["columns"]) + "\n")
        data.to_csv(f, sep="\t", header=False, index=False, lineterminator="\n")

    return write_dataset(target, name, write_inter, summary, started, log)


def export_vae_cf(dataset, out_dir):
    """Write a built :class:`~recbole_beta.data.heldout.HeldOutDataset`'s split in the vae_cf layout.

    ``uid`` numbers training users first, then validation, then test users (as the reference
    code's ``profile2id`` does); ``unique_sid.txt`` lists the item tokens in RecBole's id order.
    """
    out = Path(out_dir)
    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    inter = dataset.inter_feat
    users = inter[uid_field].numpy()
    items = inter[iid_field].numpy()
    roles = np.asarray(dataset.roles)
    order = np.concatenate([dataset.protocol_users[g] for g in ("train", "valid", "test")])
    uid_of = np.zeros(dataset.user_num, dtype=np.int64)
    uid_of[order] = np.arange(len(order))
    item_tokens = dataset.field2id_token[iid_field][1:]  # id 0 is padding
    with AtomicFiles(out) as writer:
        for file, role in FILES.items():
            rows = roles == role
            frame = pd.DataFrame({"uid": uid_of[users[rows]], "sid": items[rows] - 1})
            with writer.open(file) as f:
                frame.sort_values("uid", kind="stable").to_csv(f, index=False, lineterminator="\n")
        with writer.open(ITEMS_FILE) as f:
            f.write("\n".join(map(str, item_tokens)) + "\n")
    return out
