"""The one exception type rfjax raises for bad input.

Every message is one sentence that names the argument (or layer) at fault and says
what to do, so users never have to read a traceback from inside JAX or Keras.
"""


class RFError(ValueError):
    """Bad input to rfjax: the message names the argument and the fix."""


class RFCallError(RFError):
    """The function failed when called on the input (usually an input its layers cannot
    take, such as one too small for a 'valid' layer)."""


class RFTooLarge(RFError):
    """The RF reaches past the input on some axis, so it cannot be measured there.

    Attributes:
      axis: ``"h"`` or ``"w"``.
      everywhere: every cell's RF covers the whole input (a global dependence, or an
        RF much larger than the input).
      input_shape: ``(H, W)`` of the input tried last.
    """

    def __init__(self, message: str, axis: str, everywhere: bool, input_shape: tuple[int, int]):
        super().__init__(message)
        self.axis = axis
        self.everywhere = everywhere
        self.input_shape = input_shape


class RFGlobal(RFTooLarge):
    """The output depends on the whole input only (global pooling with no convolutional
    path to the input): it has no finite RF at any input size."""


class RFMemoryError(RFError):
    """A compiled program would not fit in memory even for one item of its batch.

    Attributes:
      needed: bytes XLA reserves for one item (one output cell, one image).
      budget: the budget it was held to.
    """

    def __init__(self, message: str, needed: int, budget: int):
        super().__init__(message)
        self.needed = needed
        self.budget = budget


class RFZeroGradient(RFError):
    """Some output cells' input gradients are exactly zero (dead ReLUs, max pooling, or
    an output reached only through a global branch that is held constant)."""


class RFWriteError(RFError):
    """A result file could not be written (disk full, read-only folder, a directory in
    its place); every row finished before it is kept."""


def cause(e: BaseException, limit: int = 200) -> str:
    """``"TypeName: first line of the message"`` (cut at ``limit`` characters): how a
    one-sentence rfjax error quotes the exception that caused it (the whole exception
    stays chained as ``__cause__``; ``rfjax --debug`` prints it)."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first[:limit]}" if first else type(e).__name__


class RFUnsupported(RFError):
    """A primitive on the path from the input that the RF preparation cannot make exact
    (see :mod:`rfjax.jaxpr`): the RF is refused rather than measured wrong.

    Attributes:
      primitive: the JAX primitive's name, e.g. ``"sort"``.
      where: where it sits, e.g. ``"scan body > cond branch 1"``.
    """

    def __init__(self, message: str, primitive: str, where: str):
        super().__init__(message)
        self.primitive = primitive
        self.where = where


class RFDataDependent(RFUnsupported):
    """Control flow steered by the input values (a ``cond`` index, a ``while`` predicate):
    the RF would only be that of the branch taken at the constant input."""


class RFUnreadableImage(RFError):
    """An image file that cannot be read, or whose channel count the model does not take."""


class RFUnhandledSetting(RFError):
    """A layer setting (config key) that the layer's converter does not implement and that
    would change the layer's result: the conversion is refused rather than silently wrong.

    Attributes:
      layer: the layer's name in the model.
      keys: the config keys the converter would have ignored.
    """

    def __init__(self, message: str, layer: str, keys: list[str]):
        super().__init__(message)
        self.layer = layer
        self.keys = keys


def output_label(name: object) -> str:
    """How a message names an output: ``"the output"`` for a function's only one (``name``
    ``None``), else ``"output 'name'"``."""
    return "the output" if name is None else f"output {name!r}"


class RFNotLogits(RFError):
    """The scores a class activation map would explain are softmax probabilities (every
    row non-negative and summing to one), not the pre-softmax logits."""


class RFNeedsHead(RFError):
    """A CAM method needs a head the model does not have after the explained layer
    (plain CAM: global average pooling + dense)."""


class RFBadImages(RFError):
    """Images the model cannot be explained on: mixed sizes, the wrong number of
    channels, or non-finite pixels."""
