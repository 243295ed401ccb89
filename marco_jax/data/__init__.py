"""Data: tokenizer, chat template, corpora and the training input pipeline.

Kept import-light on purpose: submodules pull in tiktoken / TensorFlow / seqio only when used.
"""
