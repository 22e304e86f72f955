"""Training on one device, without Ray: ``trainer`` trains one network (SGD, schedule, BN,
evaluation, grafting its own weights); ``fused`` trains several networks of one device in one
fused step (``grouped``: as one wide network; or vmapped) and grafts between them there.
Imports ``core``, ``models``, ``data`` and ``config`` only."""
