"""Cohorts: one recipe, run on every subject of a study, locally or on a Dask cluster.

See :mod:`.recipe` (the file format and its validation), :mod:`.subjects` (finding each
subject's files), :mod:`.runner` (one subject), :mod:`.cluster` (all of them on Dask) and
:mod:`.table` (the cohort table).
"""

from .cluster import close_client, print_summary, run_cohort, start_client
from .recipe import Recipe, RecipeError, Step, load_recipe, parse_recipe
from .runner import dice, run_subject
from .subjects import Subject, find_subjects

__all__ = [
    "Recipe", "RecipeError", "Step", "Subject", "close_client", "dice", "find_subjects", "load_recipe", "parse_recipe",
    "print_summary", "run_cohort", "run_subject", "start_client",
]
