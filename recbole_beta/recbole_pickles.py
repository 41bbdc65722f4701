"""RecBole 1.2.1's own checkpoints, pickled Python objects: what they would import, and reading them as data.

RecBole pickles its Config object (and models' numpy/scipy attributes) into checkpoints, which torch's safe
loader (``weights_only=True``) refuses. :func:`pickled_globals` names what such a file would import, without
importing or calling any of it, for the refusal's message.

:func:`load_recbole_checkpoint` reads one for ``convert-checkpoint`` as data, importing nothing a file names:
a full unpickler calls whatever a file says, and RecBole's ``Config(...)`` evals its settings. Tensors and numpy
arrays come through torch's and numpy's own rebuilders; RecBole's Config, its enums, scipy's matrices and the
classes a Config names (its model's, yaml's loader) come back as inert stand-ins, never called, which this
module's code then turns into data (the Config into its settings, ``final_config_dict``; an enum into the string
:func:`recbole_beta.files.plain` makes of it; a matrix into one scipy builds from its arrays). Anything else, or
a stand-in called, is refused (:class:`Refused`, naming the global) before it runs; :func:`convertible` says
which globals are read.
"""

import collections
import functools
import pickle
import types
import warnings
import zipfile

import numpy as np
import scipy.sparse as sp
import torch

from recbole_beta.errors import CheckpointError
from recbole_beta.files import plain

try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 1.26 has numpy.core only; files name either
    from numpy.core import multiarray as _multiarray


class Refused(CheckpointError):
    """A file names a global ``convert-checkpoint`` never imports, or calls one that is only stood in for."""

    def __init__(self, name, why):
        self.name = name
        super().__init__(f"it would {why}")


def _reconstructor(cls, base, state):
    """copyreg's, as protocol 0 and 1 pickles name it: only a saved object's stand-in, created empty."""
    if base is object and state is None and isinstance(cls, _StandInType) and issubclass(cls, _Saved):
        return cls.__new__(cls)
    raise Refused("copyreg._reconstructor",
                  "call copyreg._reconstructor other than to create RecBole's Config or a scipy matrix")


def _encode(text, encoding="utf-8"):
    """_codecs.encode, as protocol 2 pickles write bytes (``encode(text, 'latin1')``): latin-1 only."""
    if type(text) is str and encoding in ("latin1", "latin-1"):
        return text.encode("latin-1")
    raise Refused("_codecs.encode", "call _codecs.encode other than on latin-1 text, as pickle writes bytes")


def _empty_bytes(*args):
    """builtins.bytes, as protocol 2 pickles write ``b''``: without arguments only."""
    if args:
        raise Refused("builtins.bytes", "call builtins.bytes with arguments, where pickle writes only b''")
    return b""


#: torch's and numpy's own rebuilders of tensors and arrays (what torch's safe loading allows) and plain
#: containers, by the names files give them (protocol 2 names builtins __builtin__ and copyreg copy_reg)
_DATA = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "object"): object,  # the base copyreg._reconstructor is given
    ("builtins", "bytes"): _empty_bytes,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("_codecs", "encode"): _encode,
    ("torch", "device"): torch.device,
    ("torch", "Size"): torch.Size,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "matrix"): np.matrix,  # EASE's item similarity
    **{(module, name): getattr(_multiarray, name)
       for module in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")},
}
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
#: objects pickled by their state: RecBole's Config (and the plugin's subclass), and scipy's matrices in the
#: formats RecBole's models keep (EASE: csr; ItemKNN: csc, lil; coo), under scipy >= 1.8's and older paths
_CONFIGS = {("recbole.config.configurator", "Config"), ("recbole_beta.config", "Config")}
_MATRICES = {(f"scipy.sparse.{private}{fmt}", f"{fmt}_matrix"): fmt
             for fmt in ("csr", "csc", "coo", "lil") for private in ("_", "")}
#: RecBole 1.2.1's enums (recbole/utils/enum_type.py), which a Config's settings hold
_ENUMS = {("recbole.utils.enum_type", name) for name in
          ("ModelType", "KGDataLoaderState", "EvaluatorType", "InputType", "FeatureType", "FeatureSource")}
#: classes a Config holds as attributes: yaml's loader, and its model's class (under these modules)
_LOADERS = {("yaml.loader", "FullLoader"), ("yaml.loader", "SafeLoader")}
_MODEL_MODULES = ("recbole.model.", "recbole_beta.model.")


class _StandInType(type):
    """The stand-ins' type: calling one (pickle's REDUCE) goes to its ``_call``, and none can be changed."""

    def __call__(cls, *args, **kwargs):
        return cls._call(args, kwargs)

    def __setattr__(cls, name, value):
        raise Refused(cls._global, f"change {cls._global}")

    def __delattr__(cls, name):
        raise Refused(cls._global, f"change {cls._global}")

    @property
    def __setstate__(cls):  # pickle's BUILD on the class itself (its objects' __setstate__ is their class's)
        def refuse(state):
            raise Refused(cls._global, f"change {cls._global}")

        return refuse


class _Saved(metaclass=_StandInType):
    """Stands for a class whose objects RecBole's checkpoints hold by their state (its Config, scipy's matrices):
    created only as pickle rebuilds such an object (``cls.__new__(cls)``, then ``__setstate__`` with a dict)."""

    __slots__ = ("state",)
    _global = _kind = None

    def __new__(cls, *args, **kwargs):
        if args or kwargs:
            raise Refused(cls._global, f"create {cls._global} from arguments, where a checkpoint gives its state")
        saved = object.__new__(cls)
        saved.state = None
        return saved

    def __setstate__(self, state):
        if self.state is not None or type(state) is not dict:
            raise CheckpointError(f"its {self._global} is not saved as RecBole saves one (its state as a dict)")
        self.state = state

    @classmethod
    def _call(cls, args, kwargs):
        raise Refused(cls._global, f"call {cls._global}, which a RecBole checkpoint only rebuilds from its state")


class _Enum(metaclass=_StandInType):
    """Stands for one of RecBole's enums: called with one saved value, as pickle rebuilds a member, it gives an
    :class:`_EnumValue`; nothing else."""

    __slots__ = ()
    _global = None

    def __new__(cls, *args, **kwargs):
        raise Refused(cls._global, f"create {cls._global} other than from a saved value")

    @classmethod
    def _call(cls, args, kwargs):
        if kwargs or len(args) != 1 or type(args[0]) not in (int, str):
            raise Refused(cls._global, f"call {cls._global} with other than one saved value (an int or a str)")
        return _EnumValue(cls._global, args[0])


class _Named(metaclass=_StandInType):
    """Stands for a class a RecBole Config holds as an attribute (its model's class, yaml's loader): kept,
    never called nor created."""

    __slots__ = ()
    _global = None

    def __new__(cls, *args, **kwargs):
        raise Refused(cls._global, f"create a {cls._global}, a class a RecBole checkpoint only names")

    @classmethod
    def _call(cls, args, kwargs):
        raise Refused(cls._global, f"call {cls._global}, a class a RecBole checkpoint only names")


class _EnumValue:
    """A member of RecBole's enum ``name`` as a checkpoint saves it: its value; a file cannot change it."""

    __slots__ = ("name", "value")

    def __init__(self, name, value):
        self.name, self.value = name, value

    def __setstate__(self, state):
        raise CheckpointError(f"its {self.name} is not saved as RecBole saves an enum (one value)")


@functools.lru_cache(maxsize=None)
def _stand_in(base, module, name, kind=None):
    """The stand-in (a subclass of ``base``) for the global ``module.name``: one class per global."""
    namespace = {"__slots__": (), "__module__": __name__, "_global": f"{module}.{name}"}
    if kind is not None:
        namespace["_kind"] = kind
    return _StandInType(name, (base,), namespace)


def _lookup(module, name):
    """What the unpickler gives for the global ``module.name``: one of :data:`_DATA`, a stand-in, or None
    (refused). Nothing is imported."""
    key = (_PY2_MODULES.get(module, module), name)
    if key in _DATA:
        return _DATA[key]
    if key in _CONFIGS:
        return _stand_in(_Saved, *key, "config")
    if key in _MATRICES:
        return _stand_in(_Saved, *key, _MATRICES[key])
    if key in _ENUMS:
        return _stand_in(_Enum, *key)
    if key in _LOADERS or (module.startswith(_MODEL_MODULES) and name.isidentifier()
                           and all(part.isidentifier() for part in module.split("."))):
        return _stand_in(_Named, *key)
    return None


def convertible(module, name):
    """True for the globals ``convert-checkpoint`` reads (:func:`load_recbole_checkpoint`): torch's and numpy's
    rebuilders of tensors and arrays, and, as stand-ins, RecBole's Config, enums, model classes, scipy matrices."""
    if module in ("torch", "torch.storage") and name.endswith("Storage"):
        return True  # how a torch file names its tensors' storages (torch's loader maps these itself)
    return _lookup(module, name) is not None


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
    """Unpickles RecBole 1.2.1 checkpoints as data: every global is one of :func:`_lookup`'s, nothing is
    imported, and a global it does not know is refused (:class:`Refused`) before anything runs."""

    def find_class(self, module, name):
        found = _lookup(module, name)
        if found is None:
            raise Refused(f"{module}.{name}", f"import {module}.{name}, which a RecBole checkpoint never holds")
        return found


def _convert_pickle_module():
    module = types.ModuleType("recbole_beta_convert_pickle")
    module.Unpickler = _ConvertUnpickler
    module.load = lambda file, **kwargs: _ConvertUnpickler(file, **kwargs).load()
    return module


class SavedConfig:
    """What ``convert-checkpoint`` keeps of a RecBole Config: its settings and those it was given, as data."""

    def __init__(self, final_config_dict, external_config_dict):
        self.final_config_dict = final_config_dict
        self.external_config_dict = external_config_dict


@functools.lru_cache(maxsize=None)
def _enum_strings(name):
    """Each value of RecBole's enum ``name`` -> what :func:`recbole_beta.files.plain` makes of its member."""
    from recbole.utils import enum_type  # RecBole's module, imported by this code: no file names it

    return {member.value: plain(member) for member in getattr(enum_type, name)}


def _enum_string(saved):
    strings = _enum_strings(saved.name.rpartition(".")[2])
    if saved.value not in strings:
        raise CheckpointError(f"its {saved.name} value {saved.value!r} is none of RecBole's")
    return strings[saved.value]


def _saved_config(saved, path):
    state = saved.state or {}
    final, given = state.get("final_config_dict"), state.get("external_config_dict", {})
    if type(final) is not dict or type(given) is not dict:
        raise CheckpointError(f"its {saved._global} holds no settings (final_config_dict)")
    return SavedConfig(_as_data(final, path), _as_data(given, path))


def _array(saved, key):
    value = saved.state.get(key)
    if type(value) is not np.ndarray or value.dtype.hasobject:
        raise CheckpointError(f"its {saved._global} holds no array {key}")
    return value


def _lil_as_coo(saved, shape):
    """A lil matrix's saved rows (each a list of columns) and data (each a list of values) as a coo matrix."""
    rows, values = saved.state.get("rows"), saved.state.get("data")
    if (type(rows) is not np.ndarray or type(values) is not np.ndarray or rows.shape != (shape[0],)
            or values.shape != rows.shape or not all(type(r) is list for r in (*rows, *values))):
        raise CheckpointError(f"its {saved._global} holds no rows and data as scipy saves them")
    dtype = saved.state.get("dtype")
    dtype = dtype if isinstance(dtype, np.dtype) and not dtype.hasobject else np.float64
    row = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    col = np.array([c for r in rows for c in r], dtype=np.int64)
    data = np.array([v for r in values for v in r], dtype=dtype)
    return sp.coo_matrix((data, (row, col)), shape=shape, dtype=dtype)


def _matrix(saved):
    """A scipy matrix built by scipy from the arrays of the stand-in's saved state, checked in full."""
    fmt, state = saved._kind, saved.state or {}
    shape = state.get("_shape", state.get("shape"))
    if type(shape) is not tuple or len(shape) != 2 or not all(isinstance(n, (int, np.integer)) for n in shape):
        raise CheckpointError(f"its {saved._global} holds no shape")
    try:
        if fmt in ("csr", "csc"):
            build = sp.csr_matrix if fmt == "csr" else sp.csc_matrix
            matrix = build((_array(saved, "data"), _array(saved, "indices"), _array(saved, "indptr")), shape=shape)
            matrix.check_format(full_check=True)  # indices within the shape, indptr in order
            return matrix
        if fmt == "coo":
            coords = state["coords"] if "coords" in state else (state.get("row"), state.get("col"))
            if (type(coords) is not tuple or len(coords) != 2
                    or not all(type(c) is np.ndarray and not c.dtype.hasobject for c in coords)):
                raise CheckpointError(f"its {saved._global} holds no coordinates")
            return sp.coo_matrix((_array(saved, "data"), coords), shape=shape)
        return _lil_as_coo(saved, shape).tolil()
    except (TypeError, ValueError, OverflowError, IndexError) as error:
        detail = " ".join(str(error).split())
        raise CheckpointError(f"its {saved._global} is not a matrix scipy rebuilds ({detail[:200]})") from None


def _as_data(value, path=()):
    """``value`` with every stand-in made data by this module's code: Config -> :class:`SavedConfig`, enum ->
    its string, matrix -> a scipy matrix, a class named -> what plain() makes of a class. ``path``: the ids of
    the containers around it."""
    if id(value) in path:
        raise CheckpointError("it holds an object that contains itself, which no RecBole checkpoint does")
    kind, inner = type(value), (*path, id(value))
    if kind in (dict, collections.OrderedDict):
        data = kind((_as_data(k, inner), _as_data(v, inner)) for k, v in value.items())
        if kind is collections.OrderedDict:  # a state_dict's _metadata (module versions)
            data.__dict__.update({k: _as_data(v, inner) for k, v in vars(value).items()})
        return data
    if kind in (list, tuple, set, frozenset):
        return kind(_as_data(v, inner) for v in value)
    if isinstance(value, _StandInType):
        return f"<class '{value._global}'>"  # plain() of the class itself
    if isinstance(value, _EnumValue):
        return _enum_string(value)
    if isinstance(value, _Saved):
        return _saved_config(value, inner) if value._kind == "config" else _matrix(value)
    if isinstance(value, np.ndarray) and value.dtype.hasobject:
        raise CheckpointError("it holds an array of Python objects, which convert-checkpoint does not read")
    return value


def load_recbole_checkpoint(source):
    """The checkpoint in ``source`` as data, read through :class:`_ConvertUnpickler` and :func:`_as_data`: a file
    that names anything else, or calls a stand-in, is refused (:class:`Refused`, naming the global) before
    anything it names runs; one that holds its objects otherwise than RecBole saves them is a
    :class:`CheckpointError`; other failures are torch's own."""
    with warnings.catch_warnings():  # torch warns about the pickle protocol of RecBole's own files
        warnings.simplefilter("ignore")
        loaded = torch.load(source, map_location="cpu", weights_only=False, pickle_module=_convert_pickle_module())
    try:
        return _as_data(loaded)
    except RecursionError:
        raise CheckpointError("it nests objects deeper than a RecBole checkpoint does") from None
