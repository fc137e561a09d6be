"""Model specs. Importing this package registers SINGER; baselines register from ``baselines``."""

from singer.models import singer  # noqa: F401  (registers "singer")
from singer.models.spec import Conditions, ModelSpec, count_parameters, get_model_spec, register_model_spec

__all__ = ["Conditions", "ModelSpec", "count_parameters", "get_model_spec", "register_model_spec"]
