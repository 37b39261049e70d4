"""Pure math on tensors: schedule, interpolant, time sampling, flow map, samplers, masked diffusion (MATH.md)."""

from flm.flow.categorical import gumbel_max
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
from flm.flow.time_sampling import stratified_times, uniform_grid

__all__ = [
    "TimeSchedule",
    "alpha",
    "ancestral_step",
    "argmax_probability",
    "dense_state",
    "flm_sample",
    "flow_map",
    "flow_map_sample",
    "gumbel_max",
    "mask_tokens",
    "masked_sample",
    "nelbo_weight",
    "noise_factor",
    "project_noise",
    "projected_state",
    "renoise",
    "reveal_probability",
    "sample_projected_noise",
    "semigroup_target",
    "semigroup_weight",
    "stratified_times",
    "training_times",
    "uniform_grid",
]
