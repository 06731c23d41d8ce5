"""Workarounds for third-party libraries, one module each, named for what they patch.

- ``cls_only``: transformers 5.23 BERT / DistilBERT layers -- the last layer computes only [CLS].
- ``litserve``: LitServe 0.2.19 -- queues as pipes instead of manager proxies; its worker monitor
  races its own shutdown.
- ``resume``: pytorch-lightning 2.6.6 -- a resumed fit's first epoch draws the batches its checkpoint
  says (the sampler's epoch and the saved loader position, both lost there).

Each says the version it was written against; its tests fail when a new version changes what it relies on.
"""
