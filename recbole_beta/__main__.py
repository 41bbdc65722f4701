"""``python -m recbole_beta --model=... --dataset=...``: the same as run_recbole_beta.py."""

from recbole_beta.cli import main

raise SystemExit(main())
