"""Kaggle delivery, in modules the notebook can import one at a time:

* ``pack`` (with ``manifest`` and ``wheels``): pack weights, configs and wheels into a dataset folder;
* ``preflight``: before ``pip install``, can this image install the pack's wheels? (standard library only);
* ``runtime``: the pack as the notebook reads it, checked against its manifest;
* ``environment``: the machine facts the notebook decides by (the GPUs, the engine to run, whether CUDA runs).

Importing this package imports none of them.
"""
