"""Errors for bad input: each message names the file (or frame) and the problem."""


class VOSInputError(ValueError):
    """A frame, annotation or video that cannot be used."""


class AnnotationError(VOSInputError):
    pass


class VideoReadError(VOSInputError):
    pass
