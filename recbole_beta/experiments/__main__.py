"""``python -m recbole_beta.experiments``: see :mod:`recbole_beta.experiments.cli`."""

from recbole_beta.experiments.cli import main

raise SystemExit(main())
