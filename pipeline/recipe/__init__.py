"""Recipes: the schema (``schema``), reading and validating one (``loader``), ``--set`` overrides, the stage graph
(``graph``) and the discovery of stage kinds (``kinds``)."""

from .graph import downstream_of, topological_order
from .loader import load_recipe
from .schema import Recipe

__all__ = ["Recipe", "downstream_of", "load_recipe", "topological_order"]
