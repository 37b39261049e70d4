"""Pure math on tensors: schedule, interpolant, time sampling, flow map, samplers, masked diffusion (MATH.md)."""

from flm.flow.categorical import gumbel_max
from flm.flow.distill_targets import (
    EULERIAN_GAP,
    EulerianParts,
    LagrangianParts,
    eulerian_parts,
    eulerian_target,
    lagrangian_parts,
    lagrangian_target,
    semigroup_distill_target,
    sparsemax,
)
from flm.flow.flow_map import flow_map, renoise, semigroup_target, semigroup_weight
from flm.flow.interpolant import (
    dense_state,
    noise_factor,
    project_noise,
    projected_state,
    sample_projected_noise,
)
from flm.flow.masked import (
    alpha,
    ancestral_step,
    mask_tokens,
    masked_sample,
    nelbo_weight,
    reveal_probability,
    training_times,
)
from flm.flow.sampler import flm_sample, flow_map_sample
from flm.flow.schedule import TimeSchedule, argmax_probability
from flm.flow.time_sampling import BatchSlice, stratified_times, uniform_grid

__all__ = [
    "EULERIAN_GAP",
    "BatchSlice",
    "EulerianParts",
    "LagrangianParts",
    "TimeSchedule",
    "alpha",
    "ancestral_step",
    "argmax_probability",
    "dense_state",
    "eulerian_parts",
    "eulerian_target",
    "flm_sample",
    "flow_map",
    "flow_map_sample",
    "gumbel_max",
    "lagrangian_parts",
    "lagrangian_target",
    "mask_tokens",
    "masked_sample",
    "nelbo_weight",
    "noise_factor",
    "project_noise",
    "projected_state",
    "renoise",
    "reveal_probability",
    "sample_projected_noise",
    "semigroup_distill_target",
    "semigroup_target",
    "semigroup_weight",
    "sparsemax",
    "stratified_times",
    "training_times",
    "uniform_grid",
]
