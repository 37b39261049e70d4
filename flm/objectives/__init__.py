"""The only place where a network meets the math: FLM loss and FMLM distillation."""

from flm.objectives.common import LossOutput, ProjectedSpace
from flm.objectives.flm_loss import FLMObjective
from flm.objectives.fmlm_distill import FMLMDistillation, split_sizes
from flm.objectives.loss_weight import LossWeight

__all__ = ["FLMObjective", "FMLMDistillation", "LossOutput", "LossWeight", "ProjectedSpace", "split_sizes"]
