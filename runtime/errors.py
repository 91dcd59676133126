"""Errors the runtime raises for bad input (bundle errors live in `bundle.py`)."""


class InputError(ValueError):
    """Bad input to the model: token ids out of range, an empty or too long prompt, no tokenizer."""
