"""Pure math on tensors: schedule, interpolant, time sampling, flow map, samplers (MATH.md)."""

from flm.flow.flow_map import flow_map, renoise, semigroup_target, semigroup_weight
from flm.flow.interpolant import (
    dense_state,
    noise_factor,
    project_noise,
    projected_state,
    sample_projected_noise,
)
from flm.flow.sampler import flm_sample, flow_map_sample
from flm.flow.schedule import TimeSchedule, argmax_probability
from flm.flow.time_sampling import stratified_times, uniform_grid

__all__ = [
    "TimeSchedule",
    "argmax_probability",
    "dense_state",
    "flm_sample",
    "flow_map",
    "flow_map_sample",
    "noise_factor",
    "project_noise",
    "projected_state",
    "renoise",
    "sample_projected_noise",
    "semigroup_target",
    "semigroup_weight",
    "stratified_times",
    "uniform_grid",
]
