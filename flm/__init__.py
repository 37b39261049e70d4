"""flm: flow language models (FLM) and their distilled one-step flow maps (FMLM).

Importing the package has no side effects: no environment reads, no global torch flags,
no optional kernels. Subpackages are imported explicitly (``from flm.flow import ...``).
"""

__version__ = "0.1.0"
