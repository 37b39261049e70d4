"""Toy sources with exact likelihoods and denoisers, and the known-language demo."""

from flm.toy.markov import MarkovSource, histogram_entropy

__all__ = ["MarkovSource", "histogram_entropy"]
