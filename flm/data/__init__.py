"""Data: corpora -> tokenizer -> packed token blocks.

One concept per module; import what you need explicitly (nothing heavy is imported here):

* :mod:`flm.data.sources` — the factory turning a ``data.source`` into a stream of documents
  (:mod:`~flm.data.packaged`, :mod:`~flm.data.files`, :mod:`~flm.data.hf`);
* :mod:`flm.data.corpus` — writes a source's documents, split train/validation, to parquet shards;
* :mod:`flm.data.tokenizer` — the factory for ``bpe`` / ``gpt2`` / ``hf`` tokenizers, saved as a
  ``tokenizer.json`` plus the special-token ids and the exact vocabulary size ``V``;
* :mod:`flm.data.packing` — tokenizes the corpus and packs it into memory-mapped blocks of ``L``;
* :mod:`flm.data.blocks` — reads those blocks back (the training side's view).
"""
