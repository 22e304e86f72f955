"""Tracking a run in MLflow: ``tracker`` (the store, params, metrics, artifacts) and
``null_tracker`` (the same calls, recording nothing), ``checkpoint`` files and ``Resume``,
``plots``, ``logged_models``, ``dataset_input``, ``system_metrics``, ``description``, and
``experiment``, which runs one population round by round and hands each round to its
tracker."""
