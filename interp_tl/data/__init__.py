"""Data shipped with the package: problem templates and the byte-level tokenizer."""
