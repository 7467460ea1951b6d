"""The one exception type rfjax raises for bad input.

Every message is one sentence that names the argument (or layer) at fault and says
what to do, so users never have to read a traceback from inside JAX or Keras.
"""


class RFError(ValueError):
    """Bad input to rfjax: the message names the argument and the fix."""
