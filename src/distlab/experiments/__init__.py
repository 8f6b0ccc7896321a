"""Experiments over many runs: sweeps, reports and their pages and figures, the what-if
network model, hyperparameter tuning. They reach a run only through api, config and runs."""
