"""Entry points of the DVC stages: thin command lines that read ``params.yaml`` through
:mod:`flm.config` and call the library. Nothing under ``flm/`` imports this package."""
