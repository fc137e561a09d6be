"""Reimplemented talking-face baselines: one folder each, registered as a ModelSpec by name.

Importing this package imports every baseline folder (its register call runs). Their default
configs live in ``baselines/conf/model/`` (on the Hydra search path of ``singer.train``).
"""

from singer.registry import import_submodules

import_submodules(__name__, __path__)
