"""Train and test a model on a dataset: the plugin's beta models or any RecBole model, on one split.

    python run_recbole_beta.py --model=ScaledBetaMultVAE --dataset=ml-100k --gamma=0.01
    python run_recbole_beta.py --model=EASE --dataset=ml-100k --config_files="a.yaml b.yaml"

Any --key=value overrides that config key, as with RecBole's run_recbole.py.
"""

from recbole_beta.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
