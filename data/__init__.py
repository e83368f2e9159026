"""Files → conversations → tokens → packed rows. Needs a tokenizer, never a model."""
