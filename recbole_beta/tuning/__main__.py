"""``python -m recbole_beta.tuning``: the same as run_hyper.py (see :mod:`recbole_beta.tuning.cli`)."""

from recbole_beta.tuning.cli import main

raise SystemExit(main())
