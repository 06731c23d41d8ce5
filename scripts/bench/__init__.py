"""The benchmarks, one module each, run from the repository root as ``python -m scripts.bench.<name>``
(serve, prune, explain, data, train); what they share is in ``common``. ``--smoke`` runs any of them at
its smallest size, in seconds, and writes its JSON to a temporary folder; a full run writes
``results/bench/<name>.json``."""
