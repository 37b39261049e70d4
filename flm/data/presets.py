"""Named Hugging Face dataset presets: the paper's corpora (LM1B, OpenWebText) and WikiText-103.

Pure data, no imports: :mod:`flm.config` fills an ``hf`` source from these, so a preset name in
``params.yaml`` expands to exactly the fields listed here (``data.source.preset: lm1b``).

* ``lm1b`` — One Billion Word benchmark, parquet copy ``dvruette/lm1b`` (the original ``lm1b``
  loading script no longer runs under ``datasets`` >= 4); its ``test`` split is the validation
  split, and the text is detokenized (``"it 's"`` -> ``"it's"``) as in MDLM/Duo before the
  ``bert-base-uncased`` tokenizer sees it.
* ``openwebtext`` — ``Skylion007/openwebtext``, one ``train`` split of ~8.0 M documents; the last
  100,000 documents are held out for validation, as in MDLM/Duo/FLM.
* ``wikitext103`` — ``Salesforce/wikitext``, config ``wikitext-103-raw-v1``; one row is one line of
  an article (empty rows are skipped), detokenized (``" @-@ "`` -> ``"-"``).
"""

HF_PRESETS: dict[str, dict[str, object]] = {
    "lm1b": {
        "path": "dvruette/lm1b",
        "train_split": "train",
        "val_split": "test",
        "text_field": "text",
        "detokenize": "lm1b",
    },
    "openwebtext": {
        "path": "Skylion007/openwebtext",
        "train_split": "train",
        "val_last_n": 100_000,
        "text_field": "text",
    },
    "wikitext103": {
        "path": "Salesforce/wikitext",
        "name": "wikitext-103-raw-v1",
        "train_split": "train",
        "val_split": "validation",
        "text_field": "text",
        "detokenize": "wikitext",
    },
}
"""Preset name -> the ``hf`` source fields it sets (none of which may then be set by hand)."""
