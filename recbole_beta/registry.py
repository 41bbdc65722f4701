"""One model lookup for the CLI, experiments and tuning: the plugin's models first, then RecBole's."""

import difflib
import importlib
import importlib.util
import pkgutil
from functools import cache

from recbole.trainer import Trainer
from recbole.utils import get_model as recbole_get_model
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_beta.errors import UnknownModelError
from recbole_beta.fold_in import FOLD_IN
from recbole_beta.model import FIXED_RECBOLE_MODELS, MODELS
from recbole_beta.model.beta_multvae import BetaMultVAE
from recbole_beta.trainer import BetaTrainer, CPUDistributed, PluginTrainerMixin

#: RecBole's models that eval_protocol=strong runs (the plugin's own models all do): recbole_beta.fold_in
HELDOUT_RECBOLE_MODELS = tuple(FOLD_IN)

_RECBOLE_FAMILIES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
)


@cache
def recbole_model_modules():
    """Module names of RecBole's models (each is its model's name, lower-cased)."""
    names = set()
    for family in _RECBOLE_FAMILIES:
        # find_spec, not import: the exlib family imports xgboost and lightgbm, which may be absent
        spec = importlib.util.find_spec(f"recbole.model.{family}")
        names.update(info.name for info in pkgutil.iter_modules(spec.submodule_search_locations))
    return frozenset(names)


def _suggest(name):
    """Close model names, with their proper capitalisation."""
    candidates = {n.lower(): n for n in MODELS}
    candidates.update({m: m for m in recbole_model_modules() if m.lower() not in candidates})
    close = difflib.get_close_matches(name.lower(), list(candidates), n=3, cutoff=0.6)
    proper = []
    for key in close:
        if key in MODELS or candidates[key] in MODELS:
            proper.append(candidates[key])
            continue
        try:
            module = next(
                importlib.import_module(f"recbole.model.{family}.{key}")
                for family in _RECBOLE_FAMILIES
                if importlib.util.find_spec(f"recbole.model.{family}.{key}")
            )
            proper.extend(n for n in vars(module) if n.lower() == key)
        except (StopIteration, ImportError):
            proper.append(key)
    return proper


def plugin_model(name):
    """The plugin model called ``name``: one of the package's (:data:`~recbole_beta.model.MODELS`), else a
    ``BetaMultVAE`` subclass that a module imported since defines (a study's ``plugins``: a model of your own
    is one class in your own module, no list to edit); None if there is none."""
    if name in MODELS:
        return MODELS[name]
    found, stack = None, [BetaMultVAE]
    while stack and found is None:
        for cls in stack.pop().__subclasses__():
            if cls.__name__ == name:
                found = cls
                break
            stack.append(cls)
    return found


def get_model(name):
    """The model class called ``name``: a plugin model (:func:`plugin_model`), else a RecBole built-in."""
    model = plugin_model(name) if isinstance(name, str) else None
    if model is not None:
        return model
    if name in FIXED_RECBOLE_MODELS:
        return FIXED_RECBOLE_MODELS[name]
    if isinstance(name, str) and name.lower() in recbole_model_modules():
        try:
            return recbole_get_model(name)
        except (ValueError, AttributeError):
            pass  # right module, wrong capitalisation: fall through to the suggestion
    close = _suggest(str(name))
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"model={name!r} is not a recbole-beta or RecBole model{hint} "
        f"(plugin models: {', '.join(MODELS)})"
    )


@cache
def plugin_trainer(trainer_class):
    """RecBole's ``trainer_class`` with what the plugin gives every trainer (:class:`PluginTrainerMixin`:
    checkpoints that torch >= 2.6 loads safely, the per-epoch history, exact resume, the stop on a non-finite
    loss, ``enable_amp`` checked against the hardware), and DDP on the CPU too; named as RecBole names it
    (``Trainer``, ``RecVAETrainer``, ...). One class per RecBole trainer, made once."""
    if not issubclass(trainer_class, Trainer):
        return trainer_class  # e.g. the decision-tree trainers, which keep no torch checkpoint

    class PluginTrainer(PluginTrainerMixin, trainer_class, CPUDistributed):
        __doc__ = f"RecBole's {trainer_class.__name__}, with :class:`PluginTrainerMixin` and :class:`CPUDistributed`."

    PluginTrainer.__name__ = PluginTrainer.__qualname__ = trainer_class.__name__
    return PluginTrainer


def get_trainer(model_type, model_name):
    """The trainer RecBole would pick for the model, with safe checkpoints; BetaTrainer for ours."""
    model = plugin_model(model_name)
    if model is not None and issubclass(model, BetaMultVAE):
        return BetaTrainer
    return plugin_trainer(recbole_get_trainer(model_type, model_name))


def is_plugin_vae(model_class):
    """True for the plugin's VAEs, the BetaMultVAE family (False for RecBole's MultiVAE).

    They train one user row at a time, as RecBole's autoencoders do, but RecBole picks its user-row
    dataloader by model name and does not know theirs: the callers give them that loader.
    """
    return issubclass(model_class, BetaMultVAE)


def supports_heldout_users(model_class):
    """True for the models ``eval_protocol: strong`` runs: ours, and RecBole's that score a user
    from the items it is given (fold-in) rather than from a learned per-user parameter
    (:data:`recbole_beta.fold_in.FOLD_IN`)."""
    return is_plugin_vae(model_class) or model_class.__name__ in FOLD_IN
