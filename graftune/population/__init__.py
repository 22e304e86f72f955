"""The Ray population: ``worker`` is the actor (one per GPU, or per network where networks
cannot be fused), ``resources`` sizes the workers and gives each its networks, ``ring`` holds
the ring's rules for both kinds of rounds, ``population`` places the actors and runs
synchronous rounds with their recovery (``liveness`` says which workers are dead),
``async_rounds`` the asynchronous ring, ``rounds`` picks between them. Imports ``training``
and below; knows nothing of MLflow."""
