"""Model specs. Importing this package registers every model module in it (SINGER and the
harness's auxiliary models); baselines register from the ``baselines`` package."""

from singer.models.spec import (
    Conditions,
    ModelSpec,
    count_parameters,
    get_model_spec,
    register_model_spec,
)
from singer.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["Conditions", "ModelSpec", "count_parameters", "get_model_spec", "register_model_spec"]
