from recbole_beta.experiments.cli import main

raise SystemExit(main())
