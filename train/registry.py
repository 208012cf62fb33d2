"""Which recipe a job config runs: the one place that maps the config's `recipe`
name to a recipe class (`train.recipe.Recipe`). Everything else asks here, or asks
the recipe object.
"""

from __future__ import annotations

from train.config import JobFields
from train.full_recipe import FullRecipe
from train.lora_recipe import LoraRecipe
from train.recipe import Recipe

RECIPES: dict[str, type[Recipe]] = {"sft_lora": LoraRecipe, "sft_full": FullRecipe, "cpt": FullRecipe}
# Recipes that train on raw text (labels on every token); the others on chat-like data.
RAW_TEXT_RECIPES = frozenset({"cpt"})


def recipe_class(cfg: JobFields) -> type[Recipe]:
    """The class that trains `cfg`."""
    return RECIPES[cfg.recipe]


def build_recipe(cfg: JobFields, rank: int = 0, world_size: int = 1) -> Recipe:
    """A recipe for `cfg` as rank `rank` of `world_size` (not yet set up)."""
    return recipe_class(cfg)(cfg, rank=rank, world_size=world_size)


def trains_on_raw_text(cfg: JobFields) -> bool:
    """True when `cfg`'s recipe needs a dataset of `format: text`, False when it needs chat data."""
    return cfg.recipe in RAW_TEXT_RECIPES
