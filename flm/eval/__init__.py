"""Evaluation: the judge LM, generative perplexity and entropy, the evaluate stage's rows and reports."""
