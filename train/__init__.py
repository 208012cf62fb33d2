"""Ray Train jobs: training recipes behind one interface (`Recipe`; `build_recipe`
picks one by the config's `recipe`) that run with or without Ray, checkpoint/resume,
per-GPU memory planning, and the tiny-model builder used by tests and the demo."""

from train.config import (
    DeepSpeedSettings,
    FullJobConfig,
    LoraJobConfig,
    LoraSettings,
    MemoryPlan,
    OptimSettings,
    ScalingSettings,
    TrainJobConfig,
)
from train.full_recipe import FullRecipe
from train.lora_recipe import LoraRecipe
from train.memory import MemoryEstimate, ModelShape, check_fits, estimate_memory
from train.recipe import Recipe
from train.registry import build_recipe
from train.tiny_model import TinyModelConfig, build_tiny_model
from train.trainer import JobInputs, build_trainer

__all__ = [
    "DeepSpeedSettings",
    "FullJobConfig",
    "FullRecipe",
    "JobInputs",
    "LoraJobConfig",
    "LoraRecipe",
    "LoraSettings",
    "MemoryEstimate",
    "MemoryPlan",
    "ModelShape",
    "OptimSettings",
    "Recipe",
    "ScalingSettings",
    "TinyModelConfig",
    "TrainJobConfig",
    "build_recipe",
    "build_tiny_model",
    "build_trainer",
    "check_fits",
    "estimate_memory",
]
