"""Hyperparameter search on Ray Tune: search spaces, the Ray connection, distlab runs and
scikit-learn estimators as trials. Ray is an optional extra: nothing here imports it until a
search starts."""
