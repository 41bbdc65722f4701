"""``python -m recbole_beta.data``: see :mod:`recbole_beta.data.cli`."""

import sys

from recbole_beta.data.cli import main

sys.exit(main())
