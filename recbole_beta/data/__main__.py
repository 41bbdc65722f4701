"""``python -m recbole_beta.data``: the old name of ``python -m recbole_beta data``, which says so and stops.

The data tools' command line is :mod:`recbole_beta.data_cli`, at the top with the other command lines: this file
imports only the one-line errors, so ``data/`` holds no command line that reads the parts above it.
"""

import sys

from recbole_beta.errors import fail

sys.exit(fail("`python -m recbole_beta.data ...` is now `python -m recbole_beta data ...` (the same sub-commands "
              "and options)"))
