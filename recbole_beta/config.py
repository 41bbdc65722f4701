"""RecBole's Config with the plugin's properties loaded as internal defaults.

Priority, lowest first: RecBole's properties < the plugin's ``properties/overall.yaml`` <
``properties/model/<Model>.yaml`` < config files < config dict < ``--key=value`` on the command
line; so users override the plugin exactly as they override RecBole.
"""

import os
from pathlib import Path

from recbole.config import Config as RecBoleConfig

from recbole_beta.registry import get_model


def properties_dir():
    """The plugin's ``properties/``: inside the package once installed, beside it in a clone."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "properties", here.parent / "properties"):
        if (candidate / "overall.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"recbole-beta's properties/ not found beside {here}; reinstall the package")


class Config(RecBoleConfig):
    """Config for every model the plugin runs, its own and RecBole's alike.

    The model's own keys are validated as the config is built, so bad input fails before any
    data is read.
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None):
        super().__init__(model, dataset, config_file_list, config_dict)
        self.validate()

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
        if isinstance(model, str):
            model = get_model(model)
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        props = properties_dir()
        for file in (props / "overall.yaml", props / "model" / f"{model}.yaml"):
            if file.is_file():
                self._update_internal_config_dict(os.fspath(file))

    def validate(self):
        """Check the model's own keys (raises ConfigError); models without ``validate_config`` pass."""
        validate = getattr(self.model_class, "validate_config", None)
        if validate is not None:
            validate(self)
        return self
