"""The commands users type: ``run`` (one population), ``tune`` (a search; ``trial``,
``searchspace`` and ``search_report`` are its parts), ``reproduce`` (the paper's tables), and
``cli``, the argument parsing they share. ``python -m graftune.run`` and friends are thin
entry points that call these."""
