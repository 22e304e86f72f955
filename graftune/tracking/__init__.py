"""Tracking a run in MLflow: ``tracker`` (the store, params, metrics, artifacts),
``checkpoint`` files, ``plots``, ``logged_models``, ``dataset_input``, ``system_metrics``,
``description``, and ``experiment``, which runs one population round by round and records it."""
