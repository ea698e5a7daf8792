"""Exceptions whose message is one plain sentence meant for the user."""


class NapariUnetError(Exception):
    """Base class: ``str(error)`` is a complete sentence to show as is."""


class CheckpointError(NapariUnetError):
    """A checkpoint file is missing, corrupt, unsafe or does not fit its config."""


class InputError(NapariUnetError):
    """An image (or pair of images) cannot be used as given."""


class Cancelled(NapariUnetError):
    """The caller asked to stop."""
