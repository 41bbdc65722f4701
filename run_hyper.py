"""Search a model's hyperparameters: RecBole's HyperTuning (hyperopt) or Ray Tune, every trial a run_recbole_beta run.

    python run_hyper.py --model=ScaledBetaMultVAE --algo=bayes --max_evals=30
    python run_hyper.py --model=MultiVAE --params_file=my.hyper --algo=exhaustive --epochs=50
    python run_hyper.py --model=CyclicalBetaMultVAE --engine=ray --cpus=8 --max_evals=40

The space defaults to properties/hyper/<model>.hyper; any other --key=value fixes that config key for
every trial, as with run_recbole_beta.py. See docs/tuning.md.
"""

from recbole_beta.tuning.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
