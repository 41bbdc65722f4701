"""``python -m recbole_beta.data``: launches :mod:`recbole_beta.data_cli`, the data tools' command line."""

import sys

from recbole_beta.data_cli import main

sys.exit(main())
