"""The RF copy of a PyTorch forward, applied while torchax traces it.

:class:`RFMode` is a ``TorchFunctionMode`` entered inside torchax's environment, so it
sees every ``torch`` / ``torch.nn.functional`` call and tensor method of the forward
before torchax lowers it to JAX. It makes the traced program the exact RF copy:

* activations (ReLU family, sigmoid, tanh, GELU, SiLU, hard-swish, ...) are the identity;
* normalisation (batch, layer, group, instance, local response) is the identity, exactly
  (no ``1 / sqrt(1 + eps)`` factor); dropout is the identity;
* a product of two tensors (squeeze-excitation gates, layer scales) is
  ``a * b / stop_gradient(b)``: the value of ``a``, gradient to both factors, so a
  global dependence stays visible while magnitudes cannot square from block to block.

* max pooling is average pooling over the same windows (the output-size rule, padding
  and ``ceil_mode`` of both are PyTorch's one rule), adaptive max pooling is adaptive
  average pooling, an element-wise maximum or minimum of two tensors is their mean,
  and clamping is the identity.

Whatever ``max``/``min`` is left in the program is rewritten afterwards at the jaxpr
level (:func:`rfjax.prepare.linearize`) in the full-channel copy.

With ``one_channel=True`` every feature map has a single channel (as
:mod:`converters._collapse` does for Keras): the input is averaged over its channels,
convolutions use their kernel summed over input channels and first output channel
with ``groups=1``, linear layers act on the mean of their input features, and a
concatenation along channels is the mean of its parts. Selecting channels (slicing,
``split``, ``chunk``, ``narrow``) cannot be collapsed: it raises :class:`NotCollapsible`
and the caller traces the full-channel copy instead.
"""

from __future__ import annotations

import math

import jax
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torchax.interop import call_jax

from rfjax.prepare import support_only


class NotCollapsible(Exception):
    """The forward selects channels, so the one-channel copy would change its RF."""


_ACTIVATIONS = {
    F.relu, F.relu_, F.relu6, F.hardtanh, F.hardtanh_, F.leaky_relu, F.leaky_relu_, F.elu, F.elu_,
    F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh,
    F.softplus, F.prelu, F.rrelu, F.logsigmoid, F.softsign, F.tanhshrink,
    torch.relu, torch.relu_, torch.sigmoid, torch.sigmoid_, torch.tanh, torch.tanh_,
    torch.Tensor.relu, torch.Tensor.relu_, torch.Tensor.sigmoid, torch.Tensor.sigmoid_,
    torch.Tensor.tanh, torch.Tensor.tanh_,
}  # fmt: skip
_NORMS = {
    F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm, F.local_response_norm, F.rms_norm,
    torch.batch_norm, torch.layer_norm, torch.group_norm, torch.instance_norm,
}  # fmt: skip
_DROPOUTS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}
_PRODUCTS = {torch.mul, torch.Tensor.mul, torch.Tensor.mul_, torch.Tensor.__mul__, torch.Tensor.__rmul__,
             torch.Tensor.__imul__, torch.multiply}  # fmt: skip
_CONCATS = {torch.cat, torch.concat, torch.concatenate}
_SELECTIONS = {torch.split, torch.Tensor.split, torch.chunk, torch.Tensor.chunk, torch.narrow,
               torch.Tensor.narrow, torch.tensor_split, torch.Tensor.tensor_split, torch.unbind,
               torch.Tensor.unbind, torch.index_select, torch.Tensor.index_select}  # fmt: skip
_EXTREMES = {torch.maximum, torch.minimum, torch.fmax, torch.fmin, torch.Tensor.maximum, torch.Tensor.minimum}
_CLAMPS = {torch.clamp, torch.clip, torch.clamp_min, torch.clamp_max, torch.Tensor.clamp, torch.Tensor.clamp_,
           torch.Tensor.clip, torch.Tensor.clip_, torch.Tensor.clamp_min, torch.Tensor.clamp_max}  # fmt: skip
_POOLS = {F.avg_pool2d, F.max_pool2d}


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["input"]


def _float_map(a) -> bool:
    return isinstance(a, torch.Tensor) and a.ndim > 0 and a.is_floating_point()


def _one_scale(a: torch.Tensor) -> torch.Tensor:
    """A per-channel scale ``(C, 1, 1)`` or ``(1, C, 1, 1)`` as one channel (its mean)."""
    if (
        a.ndim in (3, 4)
        and a.shape[-3] > 1
        and tuple(a.shape[-2:]) == (1, 1)
        and (a.ndim == 3 or a.shape[0] == 1)
    ):
        return a.mean(-3, keepdim=True)
    return a


def _held_ratio(b: jax.Array) -> jax.Array:
    return b / jax.lax.stop_gradient(b)


def _spreads(kernel: tuple[int, ...] | int) -> bool:
    return (kernel if isinstance(kernel, int) else math.prod(kernel)) > 1


class RFMode(TorchFunctionMode):
    """Turns the forward traced inside it into the RF copy (see the module docstring)."""

    def __init__(self, one_channel: bool = False):
        super().__init__()
        self.one_channel = one_channel

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ACTIVATIONS or func in _NORMS or func in _DROPOUTS or func in _CLAMPS:
            return _first_tensor(args, kwargs)
        if func in _EXTREMES and all(_float_map(a) for a in args[:2]):
            return (args[0] + args[1]) / 2
        pool = _avg_pool_args(args, kwargs) if func is F.max_pool2d else None
        if pool is not None:
            return self.__torch_function__(F.avg_pool2d, types, pool, {})
        if func is F.adaptive_max_pool2d and not kwargs.get("return_indices", False):
            return self.__torch_function__(F.adaptive_avg_pool2d, types, args[:2], {})
        if func in _PRODUCTS and len(args) == 2 and all(_float_map(a) for a in args):
            a, b = (_one_scale(v) for v in args) if self.one_channel else args
            return func(a, call_jax(_held_ratio, b))
        if self.one_channel:
            return self._one_channel(func, args, kwargs)
        return func(*args, **kwargs)

    def _one_channel(self, func, args, kwargs):
        if func is F.conv2d:
            return self._conv(*args, **kwargs)
        if func is F.linear:
            x, w = args[0], args[1]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            return F.linear(
                x.mean(-1, keepdim=True), w.sum(1, keepdim=True)[:1], None if b is None else b[:1]
            )
        if func in _CONCATS:
            parts = list(args[0] if args else kwargs["tensors"])
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            if parts and parts[0].ndim == 4 and dim % 4 == 1:
                return sum(parts) / len(parts)
        if func in _SELECTIONS:
            raise NotCollapsible(f"{getattr(func, '__name__', func)} selects channels")
        if func is torch.Tensor.__getitem__ and _selects_channels(args[0], args[1]):
            raise NotCollapsible("indexing selects channels")
        out = func(*args, **kwargs)
        if func in _POOLS:
            kernel = args[1] if len(args) > 1 else kwargs["kernel_size"]
            if _spreads(kernel):
                return call_jax(support_only, out)
        return out

    @staticmethod
    def _conv(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
        w1 = w.sum(1, keepdim=True)[:1]
        out = F.conv2d(x, w1, None if bias is None else bias[:1], stride, padding, dilation, 1)
        if w.shape[-1] * w.shape[-2] > 1:
            return call_jax(support_only, out)
        return out


def _avg_pool_args(args: tuple, kwargs: dict) -> tuple | None:
    """The arguments of ``F.avg_pool2d`` over the windows of a ``F.max_pool2d`` call
    (``None`` for dilated windows or pooling indices: those stay max pooling)."""
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    given = dict(zip(names, args), **kwargs)
    if given.get("dilation", 1) not in (1, (1, 1)) or given.get("return_indices", False):
        return None
    stride = given.get("stride") or given["kernel_size"]
    return (
        given["input"],
        given["kernel_size"],
        stride,
        given.get("padding", 0),
        given.get("ceil_mode", False),
    )


def _selects_channels(x: torch.Tensor, index) -> bool:
    """Whether ``x[index]`` on an NCHW map keeps only some channels."""
    if x.ndim != 4:
        return False
    index = index if isinstance(index, tuple) else (index,)
    if len(index) < 2 or index[0] is Ellipsis:
        return False
    return not (isinstance(index[1], slice) and index[1] == slice(None))
