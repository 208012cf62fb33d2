"""Ray Train jobs: LoRA fine-tuning recipes that run with or without Ray, and the
tiny-model builder used by tests and the demo."""

from train.config import (DeepSpeedSettings, FullJobConfig, LoraJobConfig, LoraSettings, MemoryPlan,
                          OptimSettings, ScalingSettings, TrainJobConfig)
from train.recipe import LoraRecipe
from train.tiny_model import TinyModelConfig, build_tiny_model
from train.trainer import JobInputs, build_trainer

__all__ = ["DeepSpeedSettings", "FullJobConfig", "JobInputs", "LoraJobConfig", "LoraRecipe", "LoraSettings",
           "MemoryPlan", "OptimSettings", "ScalingSettings", "TinyModelConfig", "TrainJobConfig",
           "build_tiny_model", "build_trainer"]
