"""The commands users type: ``run`` (one population), ``tune`` (a search: ``search_setup``
checks it, ``worker_sizing`` sizes its workers, ``parent_run`` keeps its MLflow parent run,
``tuner`` builds the Tuner, ``trial`` runs one population per trial, ``trial_lines`` prints
them, ``searchspace``, ``search_state`` and ``search_report``), ``reproduce`` (the paper's
tables, with ``paper_numbers`` as data). They share ``startup`` (parse, validate, check the
tracking store, load the data; bad input is one line and exit code 2), ``cli`` (a flag per
setting) and ``libraries`` (Ray and MLflow started quietly). ``python -m graftune.run`` and
friends are thin entry points that call these."""
