"""`cnnctl tune`: Ray Tune sweeps whose trials are runs of the ordinary training loop.

The modules, lowest first (each imports only those above it, and config, never the reverse):

- space.py: search spaces (YAML over dotted RunConfig paths), checked before anything starts.
- plan.py: a random search's draws reduced to distinct configurations, each times its seeds (no Ray).
- spec.py: the sweep's folder and its saved spec (sweep.yaml, base.yaml).
- stats.py, report.py: per-configuration statistics, the results table, CSVs and plots (no Ray).
- schedulers.py: FIFO, ASHA and PBT, and the param_space a plan becomes.
- trial_run.py, trial.py: the trainable; a trial of several workers as a Ray Train run.
- optuna_cells.py, console.py: the optuna searcher and the per-trial rows (need Ray connected).
- sweep.py: starting, resuming and running the sweep; cli.py: the `cnnctl tune` commands.
"""
