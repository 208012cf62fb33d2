"""Ray Train jobs: LoRA fine-tuning recipes that run with or without Ray, and the
tiny-model builder used by tests and the demo."""

from train.config import LoraJobConfig, LoraSettings, OptimSettings, ScalingSettings
from train.recipe import LoraRecipe
from train.tiny_model import TinyModelConfig, build_tiny_model
from train.trainer import JobInputs, build_trainer

__all__ = ["JobInputs", "LoraJobConfig", "LoraRecipe", "LoraSettings", "OptimSettings",
           "ScalingSettings", "TinyModelConfig", "build_tiny_model", "build_trainer"]
