"""Ray Train jobs: LoRA and full fine-tuning recipes that run with or without Ray,
checkpoint/resume, per-GPU memory planning, and the tiny-model builder used by tests
and the demo."""

from train.config import (DeepSpeedSettings, FullJobConfig, LoraJobConfig, LoraSettings, MemoryPlan,
                          OptimSettings, ScalingSettings, TrainJobConfig)
from train.memory import MemoryEstimate, ModelShape, check_fits, estimate_memory
from train.recipe import LoraRecipe
from train.tiny_model import TinyModelConfig, build_tiny_model
from train.trainer import JobInputs, build_trainer

__all__ = ["DeepSpeedSettings", "FullJobConfig", "JobInputs", "LoraJobConfig", "LoraRecipe", "LoraSettings",
           "MemoryPlan", "OptimSettings", "ScalingSettings", "TinyModelConfig", "TrainJobConfig",
           "MemoryEstimate", "ModelShape", "build_tiny_model", "build_trainer", "check_fits",
           "estimate_memory"]
