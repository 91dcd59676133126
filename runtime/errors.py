"""The errors a user can cause. Every one derives from `MoedgeError`; the CLI and the API raise
nothing else for bad bundles, bad files or bad arguments."""


class MoedgeError(Exception):
    """Base of every error caused by bad input: a bundle, a file, an argument."""


class InputError(MoedgeError, ValueError):
    """Bad input to the model: token ids out of range, an empty or too long prompt, no tokenizer."""


class BundleError(MoedgeError):
    """A bundle that is missing, corrupt, truncated, of another version, or inconsistent."""


class NumericalError(MoedgeError, ArithmeticError):
    """Activations that stopped being finite numbers (an overflow in float32)."""
