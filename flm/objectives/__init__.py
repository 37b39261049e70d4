"""The only place where a network meets the math: FLM loss, FMLM distillation, the AR and MDLM baselines."""

from flm.objectives.ar import ARObjective
from flm.objectives.common import LossOutput, ProjectedSpace
from flm.objectives.flm_loss import FLMObjective
from flm.objectives.fmlm_distill import FMLMDistillation, split_sizes
from flm.objectives.loss_weight import LossWeight
from flm.objectives.mdlm import MDLMObjective

__all__ = [
    "ARObjective",
    "FLMObjective",
    "FMLMDistillation",
    "LossOutput",
    "LossWeight",
    "MDLMObjective",
    "ProjectedSpace",
    "split_sizes",
]
