"""The Ray population: ``worker`` is the actor (one per GPU, or per network where networks
cannot be fused), ``population`` places the actors and runs synchronous rounds with their
recovery, ``async_rounds`` the asynchronous ring, ``rounds`` picks between them. Imports
``training`` and below; knows nothing of MLflow."""
