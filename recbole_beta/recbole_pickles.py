"""RecBole 1.2.1's own checkpoints, pickled Python objects: what they would import, and reading them safely.

RecBole pickles its Config object (and models' numpy/scipy attributes) into checkpoints, which torch's
safe loader (``weights_only=True``) refuses. :func:`pickled_globals` names what such a file would import
without importing or calling any of it, for the refusal's message; :func:`load_recbole_checkpoint`
reads one with an unpickler that accepts only the globals a RecBole checkpoint holds
(:func:`convertible`). :mod:`recbole_beta.checkpoint` uses both (the resume's checks and
``convert-checkpoint``).
"""

import pickle
import types
import warnings
import zipfile

import torch

from recbole_beta.errors import CheckpointError

#: globals a RecBole 1.2.1 checkpoint may hold besides classes of recbole and scipy.sparse
#: (Config, its enums, the model class, sparse matrices): read by ``convert-checkpoint`` only
_CONVERTIBLE = {
    ("collections", "OrderedDict"),
    ("torch", "device"),
    ("torch", "Size"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy", "matrix"),  # EASE's item similarity
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("copyreg", "_reconstructor"),
    ("_codecs", "encode"),
    ("builtins", "object"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("yaml.loader", "FullLoader"),
    ("yaml.loader", "SafeLoader"),
}
_CONVERTIBLE_CLASS_MODULES = ("recbole.", "recbole_beta.", "scipy.sparse.")


def convertible(module, name):
    """True for the globals ``convert-checkpoint`` reads: those of RecBole's checkpoints, nothing that runs."""
    if (module, name) in _CONVERTIBLE:
        return True
    if module in ("torch", "torch.storage") and name.endswith("Storage"):
        return True  # how a torch file names its tensors' storages (torch's loader maps these itself)
    return "." not in name and module.startswith(_CONVERTIBLE_CLASS_MODULES)


class _Stub:
    """Stands for every object while a refused file is inspected: nothing it names is imported or called."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Stub()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class _GlobalsScanner(pickle.Unpickler):
    """Lists the globals (``module.name``) a pickle would import, without importing or calling any."""

    def __init__(self, file):
        super().__init__(file)
        self.found = []

    def find_class(self, module, name):
        if (module, name) not in self.found:
            self.found.append((module, name))
        return _Stub

    def persistent_load(self, pid):
        return None


def pickled_globals(path):
    """The globals a torch or pickle file would import when fully unpickled, as (module, name) pairs,
    found without importing or running any of them."""
    # not torch.serialization.get_unsafe_globals_in_checkpoint: on torch 2.13 it stops at RecBole's pickle
    # protocol 4 ("Unsupported operand 149"), the very files this must name
    found = []

    def scan(file, limit):
        for _ in range(limit):  # torch's legacy format is several pickles in a row
            scanner = _GlobalsScanner(file)
            try:
                scanner.load()
            except Exception:
                break
            finally:
                found.extend(g for g in scanner.found if g not in found)

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    if member.endswith("data.pkl"):
                        with archive.open(member) as file:
                            scan(file, 1)
        else:
            with open(path, "rb") as file:
                scan(file, 5)
    except (OSError, zipfile.BadZipFile):
        pass
    return found


# not torch.serialization.safe_globals with weights_only=True: torch 2.13's weights-only unpickler refuses
# RecBole's pickle protocol 4 whatever is allow-listed ("Unsupported operand 149")
class _ConvertUnpickler(pickle.Unpickler):
    """Unpickles RecBole 1.2.1 checkpoints only: every global must be one such a checkpoint holds
    (:func:`convertible`), and a class named in recbole or scipy.sparse must be defined there."""

    def find_class(self, module, name):
        if not convertible(module, name):
            raise CheckpointError(f"{module}.{name}")
        found = super().find_class(module, name)
        if (module, name) not in _CONVERTIBLE and not (
            isinstance(found, type) and found.__module__.startswith(_CONVERTIBLE_CLASS_MODULES)
        ):
            raise CheckpointError(f"{module}.{name}")
        return found


def _convert_pickle_module():
    module = types.ModuleType("recbole_beta_convert_pickle")
    module.Unpickler = _ConvertUnpickler
    module.load = lambda file, **kwargs: _ConvertUnpickler(file, **kwargs).load()
    return module


def load_recbole_checkpoint(source):
    """The object torch's full unpickler reads from ``source``, through :class:`_ConvertUnpickler`: a
    file that would import anything a RecBole checkpoint never holds is refused (``CheckpointError``
    naming the global) before anything in it runs; other failures are torch's own."""
    with warnings.catch_warnings():  # torch warns about the pickle protocol of RecBole's own files
        warnings.simplefilter("ignore")
        return torch.load(source, map_location="cpu", weights_only=False, pickle_module=_convert_pickle_module())
