"""Data tools: convert raw interaction files to RecBole atomic files, and generate synthetic ones.

Command line: ``python -m recbole_beta data convert ...`` and ``python -m recbole_beta data synthetic ...``
(see ``--help`` and ``dataset/README.md``). ``recbole_beta.data.download`` runs RecBole's own
download of the datasets it hosts when a run sets ``download: True``.

The converter function is ``recbole_beta.data.convert.convert``; it is not re-exported
here, where its name would hide the ``convert`` module.
"""

from recbole_beta.data.convert import (
    FORMATS,
    MULTVAE_FILTERS,
    ConversionError,
    Filters,
    generic_layout,
)
from recbole_beta.data.synthetic import PRESETS, Shape, SyntheticDataError, generate

__all__ = [
    "FORMATS",
    "MULTVAE_FILTERS",
    "PRESETS",
    "ConversionError",
    "Filters",
    "Shape",
    "SyntheticDataError",
    "generate",
    "generic_layout",
]
