"""Converters for Keras layers: one small function per layer class.

Tensors keep the layout Keras gives them inside the model (``channels_first`` layers
compute in NCHW); :mod:`converters._model` converts to NHWC only at the boundaries.
In RF mode (``rf=True``) kernels are the constant ``1 / (C_in * sqrt(kh * kw))`` per
element (``C_in`` per group, so depthwise kernels get ``1 / sqrt(kh * kw)``), dense
kernels ``1 / C_in``, biases zero, activations identity, max pooling average pooling,
normalisation / rescaling / dropout identity, sums of tensors means and products of
tensors normalised (see :meth:`converters.KerasModel.prepared`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import reduce

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from converters._activations import activation, relu
from converters._conv import conv, max_pool
from converters._geometry import config_pair
from converters._registry import Params, register
from rfjax.errors import RFError
from rfjax.prepare import constant_kernel

# --------------------------------------------------------------------------- helpers


def _channels_first(config: dict) -> bool:
    return config.get("data_format") == "channels_first"


def _layout(config: dict) -> tuple[str, str, str]:
    """``dimension_numbers`` for :func:`jax.lax.conv_general_dilated` (kernels are HWIO)."""
    return ("NCHW", "HWIO", "NCHW") if _channels_first(config) else ("NHWC", "HWIO", "NHWC")


def _spatial_axes(config: dict) -> tuple[int, int]:
    return (2, 3) if _channels_first(config) else (1, 2)


def _window(config: dict, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """A 4-D window/stride tuple with ``hw`` on the spatial axes."""
    return (1, 1, *hw) if _channels_first(config) else (1, *hw, 1)


def _add_channels(y: jax.Array, b: jax.Array, channels_first: bool) -> jax.Array:
    return y + (b.reshape((-1,) + (1,) * (y.ndim - 2)) if channels_first else b)


def _rf_kernel(kernel: np.ndarray) -> np.ndarray:
    """The RF-mode constant kernel (:func:`rfjax.prepare.constant_kernel`: ``1 / (C_in *
    sqrt(kh * kw))`` for HWIO, ``1 / C_in`` for dense)."""
    return np.full(kernel.shape, constant_kernel(kernel.shape), np.float32)


def _kernel_params(config: dict, weights: dict, rf: bool, kernel: np.ndarray, name: str = "kernel") -> Params:
    params = {name: _rf_kernel(kernel) if rf else kernel}
    if config.get("use_bias", True) and "bias" in weights:
        params["bias"] = np.zeros_like(weights["bias"]) if rf else weights["bias"]
    return params


def _along(v: jax.Array, ndim: int, axes: Sequence[int]) -> jax.Array:
    """Reshape ``v`` (shaped like the input's ``axes``) to broadcast against rank ``ndim``."""
    axes = sorted(a % ndim for a in axes)
    if v.ndim == ndim:
        return v
    shape = [1] * ndim
    for a, n in zip(axes, v.shape):
        shape[a] = n
    return v.reshape(shape)


def _axes(config: dict, key: str = "axis") -> list[int]:
    axis = config.get(key, -1)
    return [int(axis)] if isinstance(axis, (int, np.integer)) else [int(a) for a in axis]


# --------------------------------------------------------------------------- inputs


@register(
    "InputLayer",
    "Dropout",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "StochasticDepth",
    "ActivityRegularization",
    unread=("data_format",),  # the identity has no layout
)
def passthrough(config: dict, weights: dict, rf: bool):
    """Layers that are the identity at inference."""
    return (lambda p, x: x), {}


# --------------------------------------------------------------------------- convolutions


@register("Conv2D")
def conv2d(config: dict, weights: dict, rf: bool):
    cf, strides, dilation = (
        _channels_first(config),
        config_pair(config["strides"]),
        config_pair(config["dilation_rate"]),
    )
    padding, groups = config["padding"].upper(), int(config.get("groups", 1))
    act = activation(config.get("activation"), rf)

    def apply(p, x):
        y = conv(x, p["kernel"], strides, padding, dilation, groups, cf)
        return act(_add_channels(y, p["bias"], cf) if "bias" in p else y)

    return apply, _kernel_params(config, weights, rf, weights["kernel"])


def _depthwise_kernel(kernel: np.ndarray) -> np.ndarray:
    """Keras' depthwise ``(kh, kw, C, m)`` as a grouped HWIO kernel ``(kh, kw, 1, C * m)``
    (output channel ``c * m + k``, as in Keras)."""
    kh, kw, c, m = kernel.shape
    return kernel.reshape(kh, kw, 1, c * m)


def _depthwise(config: dict) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``(x, grouped kernel) -> depthwise convolution`` with the layer's settings (read now)."""
    multiplier, cf = int(config.get("depth_multiplier", 1)), _channels_first(config)
    strides, dilation = config_pair(config["strides"]), config_pair(config["dilation_rate"])
    padding = config["padding"].upper()

    def run(x: jax.Array, kernel: jax.Array) -> jax.Array:
        return conv(x, kernel, strides, padding, dilation, kernel.shape[-1] // multiplier, cf)

    return run


@register("DepthwiseConv2D")
def depthwise_conv2d(config: dict, weights: dict, rf: bool):
    cf, act, depthwise = _channels_first(config), activation(config.get("activation"), rf), _depthwise(config)

    def apply(p, x):
        y = depthwise(x, p["kernel"])
        return act(_add_channels(y, p["bias"], cf) if "bias" in p else y)

    return apply, _kernel_params(config, weights, rf, _depthwise_kernel(weights["kernel"]))


@register("SeparableConv2D")
def separable_conv2d(config: dict, weights: dict, rf: bool):
    cf, act, depthwise = _channels_first(config), activation(config.get("activation"), rf), _depthwise(config)
    kernel = _depthwise_kernel(weights["depthwise_kernel"])
    params = _kernel_params(config, weights, rf, weights["pointwise_kernel"], "pointwise_kernel")
    params["depthwise_kernel"] = _rf_kernel(kernel) if rf else kernel

    def apply(p, x):
        y = depthwise(x, p["depthwise_kernel"])
        y = conv(y, p["pointwise_kernel"], (1, 1), "VALID", channels_first=cf)
        return act(_add_channels(y, p["bias"], cf) if "bias" in p else y)

    return apply, params


def _transpose_padding(size: int, k: int, s: int, d: int, padding: str, output_padding: int | None):
    """Output length and ``(before, after)`` padding of the stride-dilated input for a
    Keras/TensorFlow transposed convolution along one axis.

    The transposed convolution is the input-gradient of a forward convolution from the
    output length ``out`` (Keras' rule) back to ``size``; the forward convolution's
    own left padding ``left`` (TensorFlow's 'same' rule) fixes the alignment.
    """
    ke = d * (k - 1) + 1
    if padding == "valid":
        out = (size - 1) * s + ke + (max(ke, s) - ke if output_padding is None else output_padding)
        left = 0
    else:
        out = size * s if output_padding is None else (size - 1) * s + ke % 2 + output_padding
        left = max((-(-out // s) - 1) * s + ke - out, 0) // 2
    before = ke - 1 - left
    return out, (before, out + ke - 2 - (size - 1) * s - before)


@register("Conv2DTranspose")
def conv2d_transpose(config: dict, weights: dict, rf: bool):
    cf, act = _channels_first(config), activation(config.get("activation"), rf)
    strides, dilation = config_pair(config["strides"]), config_pair(config["dilation_rate"])
    out_pad = config.get("output_padding")
    out_pad = (None, None) if out_pad is None else config_pair(out_pad)
    kernel = np.ascontiguousarray(weights["kernel"].transpose(0, 1, 3, 2))  # (kh, kw, C_in, filters)
    padding, axes, layout = config["padding"], _spatial_axes(config), _layout(config)

    def apply(p, x):
        kh, kw = p["kernel"].shape[:2]
        h, w = (x.shape[a] for a in axes)
        _, pad_h = _transpose_padding(h, kh, strides[0], dilation[0], padding, out_pad[0])
        _, pad_w = _transpose_padding(w, kw, strides[1], dilation[1], padding, out_pad[1])
        y = lax.conv_general_dilated(
            x,
            p["kernel"][::-1, ::-1],
            (1, 1),
            (pad_h, pad_w),
            lhs_dilation=strides,
            rhs_dilation=dilation,
            dimension_numbers=layout,
        )
        return act(_add_channels(y, p["bias"], cf) if "bias" in p else y)

    return apply, _kernel_params(config, weights, rf, kernel)


@register("Dense")
def dense(config: dict, weights: dict, rf: bool):
    act = activation(config.get("activation"), rf)

    def apply(p, x):
        y = jnp.matmul(x, p["kernel"])
        return act(y + p["bias"] if "bias" in p else y)

    return apply, _kernel_params(config, weights, rf, weights["kernel"])


# --------------------------------------------------------------------------- pooling


def _pool_args(config: dict):
    size = config_pair(config["pool_size"])
    strides = size if config.get("strides") is None else config_pair(config["strides"])
    return _window(config, size), _window(config, strides), config["padding"].upper()


def _avg_pool(config: dict) -> Callable[[Params, jax.Array], jax.Array]:
    """Keras average pooling ``(params, x) -> pooled`` with the layer's settings (read now)."""
    window, strides, padding = _pool_args(config)
    axes = _spatial_axes(config)
    return lambda p, x: _avg_pooled(x, window, strides, padding, axes)


def _avg_pooled(
    x: jax.Array, window: tuple, strides: tuple, padding: str, axes: tuple[int, int]
) -> jax.Array:
    """Average pooling: 'same' windows average only the real (unpadded) cells."""
    total = lax.reduce_window(x, 0.0, lax.add, window, strides, padding)
    if padding == "VALID":
        return total / math.prod(window)
    # Cells per window, per axis from the static shape: a product of two small
    # constants (a reduce_window over ones would be constant-folded by XLA, which
    # takes seconds on large inputs).
    counts = np.ones([1] * x.ndim, np.float32)
    for a in axes:
        n, k, st = x.shape[a], window[a], strides[a]
        ((lo, _),) = lax.padtype_to_pads((n,), (k,), (st,), "SAME")
        start = np.arange(total.shape[a]) * st - lo
        per_axis = (np.minimum(start + k, n) - np.maximum(start, 0)).astype(np.float32)
        counts = counts * per_axis.reshape([-1 if b == a else 1 for b in range(x.ndim)])
    return total / counts


@register("MaxPooling2D")
def max_pooling2d(config: dict, weights: dict, rf: bool):
    if rf:
        return _avg_pool(config), {}
    window, strides, padding = _pool_args(config)
    return (lambda p, x: max_pool(x, window, strides, padding)), {}


@register("AveragePooling2D")
def average_pooling2d(config: dict, weights: dict, rf: bool):
    return _avg_pool(config), {}


@register("GlobalAveragePooling2D")
def global_average_pooling2d(config: dict, weights: dict, rf: bool):
    axes, keep = _spatial_axes(config), bool(config.get("keepdims", False))
    return (lambda p, x: jnp.mean(x, axis=axes, keepdims=keep)), {}


@register("GlobalMaxPooling2D")
def global_max_pooling2d(config: dict, weights: dict, rf: bool):
    axes, keep = _spatial_axes(config), bool(config.get("keepdims", False))
    reduce_fn = jnp.mean if rf else jnp.max
    return (lambda p, x: reduce_fn(x, axis=axes, keepdims=keep)), {}


# --------------------------------------------------------------------------- normalisation


@register("BatchNormalization")
def batch_normalization(config: dict, weights: dict, rf: bool):
    if rf:
        return passthrough(config, weights, rf)
    axes, eps = _axes(config), float(config["epsilon"])
    params = {"mean": weights["moving_mean"], "var": weights["moving_variance"]}
    if config.get("scale", True):
        params["scale"] = weights["gamma"]
    if config.get("center", True):
        params["bias"] = weights["beta"]

    def apply(p, x):
        inv = lax.rsqrt(_along(p["var"], x.ndim, axes) + eps)
        if "scale" in p:
            inv = inv * _along(p["scale"], x.ndim, axes)
        shift = -_along(p["mean"], x.ndim, axes) * inv
        if "bias" in p:
            shift = shift + _along(p["bias"], x.ndim, axes)
        return x * inv + shift

    return apply, params


@register("LayerNormalization")
def layer_normalization(config: dict, weights: dict, rf: bool):
    if rf:
        return passthrough(config, weights, rf)
    axes, eps, rms = _axes(config), float(config["epsilon"]), bool(config.get("rms_scaling", False))
    params = {}
    if config.get("scale", True) and "gamma" in weights:
        params["scale"] = weights["gamma"]
    if config.get("center", True) and "beta" in weights and not rms:
        params["bias"] = weights["beta"]

    def apply(p, x):
        # Keras normalises by the variance also when rms_scaling=True (documented quirk).
        mean = jnp.mean(x, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
        y = (x if rms else x - mean) * lax.rsqrt(var + eps)
        if "scale" in p:
            y = y * _along(p["scale"], x.ndim, axes)
        return y + _along(p["bias"], x.ndim, axes) if "bias" in p else y

    return apply, params


@register("RMSNormalization")
def rms_normalization(config: dict, weights: dict, rf: bool):
    """``x * rsqrt(mean(x ** 2) + epsilon) * scale`` over ``axis``."""
    if rf:
        return passthrough(config, weights, rf)
    axes, eps = _axes(config), config.get("epsilon")
    eps = 1e-7 if eps is None else float(eps)

    def apply(p, x):
        y = x * lax.rsqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True) + eps)
        return y * _along(p["scale"], x.ndim, axes)

    return apply, {"scale": weights["scale"]}


@register("Normalization", unread=("axis", "mean", "variance"))  # the broadcast-shaped weights hold them
def normalization(config: dict, weights: dict, rf: bool):
    """``(x - mean) / max(sqrt(var), 1e-7)`` (or its inverse); ``weights`` hold the
    layer's broadcast-shaped ``mean`` and ``variance``."""
    if rf:
        return passthrough(config, weights, rf)
    invert = bool(config.get("invert", False))

    def apply(p, x):
        std = jnp.maximum(jnp.sqrt(p["var"]), 1e-7)
        return p["mean"] + x * std if invert else (x - p["mean"]) / std

    return apply, {"mean": weights["mean"], "var": weights["variance"]}


@register("Rescaling")
def rescaling(config: dict, weights: dict, rf: bool):
    if rf:
        return passthrough(config, weights, rf)
    scale = np.asarray(config["scale"], np.float32)
    offset = np.asarray(config["offset"], np.float32)
    return (lambda p, x: x * scale + offset), {}


# --------------------------------------------------------------------------- activations


@register("Activation")
def activation_layer(config: dict, weights: dict, rf: bool):
    act = activation(config["activation"], rf)
    return (lambda p, x: act(x)), {}


@register("ReLU")
def relu_layer(config: dict, weights: dict, rf: bool):
    if rf:
        return passthrough(config, weights, rf)
    max_value = config.get("max_value")
    kw = {
        "negative_slope": float(config.get("negative_slope", 0.0)),
        "threshold": float(config.get("threshold", 0.0)),
        "max_value": None if max_value is None else float(max_value),
    }
    return (lambda p, x: relu(x, **kw)), {}  # type: ignore[arg-type]  # max_value may be None


@register("LeakyReLU")
def leaky_relu(config: dict, weights: dict, rf: bool):
    if rf:
        return passthrough(config, weights, rf)
    slope = float(config.get("negative_slope", config.get("alpha", 0.3)))
    return (lambda p, x: jax.nn.leaky_relu(x, slope)), {}


@register("ELU")
def elu(config: dict, weights: dict, rf: bool):
    if rf:
        return passthrough(config, weights, rf)
    alpha = float(config.get("alpha", 1.0))
    return (lambda p, x: jax.nn.elu(x, alpha)), {}


@register("PReLU")
def prelu(config: dict, weights: dict, rf: bool):
    if rf:
        return passthrough(config, weights, rf)
    return (lambda p, x: jnp.maximum(x, 0.0) + p["alpha"] * jnp.minimum(x, 0.0)), {"alpha": weights["alpha"]}


@register("Softmax")
def softmax(config: dict, weights: dict, rf: bool):
    if rf:
        return passthrough(config, weights, rf)
    axis = config.get("axis", -1)
    axis = int(axis) if isinstance(axis, (int, np.integer)) else tuple(axis)
    return (lambda p, x: jax.nn.softmax(x, axis=axis)), {}


# --------------------------------------------------------------------------- reshaping


@register("ZeroPadding2D")
def zero_padding2d(config: dict, weights: dict, rf: bool):
    (t, b), (left, right) = config["padding"]
    pads = (
        [(0, 0), (0, 0), (t, b), (left, right)]
        if _channels_first(config)
        else [(0, 0), (t, b), (left, right), (0, 0)]
    )
    return (lambda p, x: jnp.pad(x, pads)), {}


@register("Cropping2D")
def cropping2d(config: dict, weights: dict, rf: bool):
    (t, b), (left, right) = config["cropping"]
    rows, cols = slice(t, -b or None), slice(left, -right or None)
    index = (slice(None), slice(None), rows, cols) if _channels_first(config) else (slice(None), rows, cols)
    return (lambda p, x: x[index]), {}


@register("UpSampling2D")
def up_sampling2d(config: dict, weights: dict, rf: bool):
    (sh, sw), axes = config_pair(config["size"]), _spatial_axes(config)
    method = config.get("interpolation", "nearest")
    if method == "nearest":
        return (lambda p, x: jnp.repeat(jnp.repeat(x, sh, axis=axes[0]), sw, axis=axes[1])), {}
    if method != "bilinear":
        raise RFError(
            f"UpSampling2D interpolation={method!r} is not supported (only 'nearest' and 'bilinear')."
        )

    def apply(p, x):
        shape = list(x.shape)
        shape[axes[0]] *= sh
        shape[axes[1]] *= sw
        return jax.image.resize(x, shape, "bilinear", antialias=False)

    return apply, {}


@register("Reshape")
def reshape(config: dict, weights: dict, rf: bool):
    target = tuple(int(v) for v in config["target_shape"])
    return (lambda p, x: jnp.reshape(x, (x.shape[0], *target))), {}


@register("Flatten")
def flatten(config: dict, weights: dict, rf: bool):
    cf = _channels_first(config)

    def apply(p, x):
        if cf and x.ndim > 2:
            x = jnp.moveaxis(x, 1, -1)
        return jnp.reshape(x, (x.shape[0], -1))

    return apply, {}


@register("Permute")
def permute(config: dict, weights: dict, rf: bool):
    dims = (0, *(int(d) for d in config["dims"]))
    return (lambda p, x: jnp.transpose(x, dims)), {}


# --------------------------------------------------------------------------- merging


def _merge(fn: Callable[[jax.Array, jax.Array], jax.Array]) -> Callable:
    return lambda p, xs: reduce(fn, xs)


def _mean(xs: Sequence[jax.Array]) -> jax.Array:
    return reduce(jnp.add, xs) / len(xs)


@register("Add")
def add(config: dict, weights: dict, rf: bool):
    """A sum; in RF mode the mean (same gradient support), so residual networks do not
    double their activations block after block."""
    return ((lambda p, xs: _mean(xs)) if rf else _merge(jnp.add)), {}


@register("Subtract")
def subtract(config: dict, weights: dict, rf: bool):
    return (lambda p, xs: xs[0] - xs[1]), {}


def rf_product(a: jax.Array, b: jax.Array) -> jax.Array:
    """RF-mode product of two tensors: ``a * (b / stop_gradient(b))``.

    Its value is ``a`` but its gradient reaches both factors (``1`` towards ``a``,
    ``a / b`` towards ``b``), so the support is that of ``a * b`` and the global
    dependence of squeeze-excitation stays visible. A plain product of prepared
    tensors squares magnitudes block after block (MobileNetV3's ``x * relu6(x + 3) / 6``
    with identity ReLUs) and overflows float32."""
    held = lax.stop_gradient(b)
    return a * (b / jnp.where(held == 0, 1.0, held))


@register("Multiply")
def multiply(config: dict, weights: dict, rf: bool):
    return _merge(rf_product if rf else jnp.multiply), {}


@register("Average")
def average(config: dict, weights: dict, rf: bool):
    return (lambda p, xs: _mean(xs)), {}


@register("Maximum")
def maximum(config: dict, weights: dict, rf: bool):
    return ((lambda p, xs: _mean(xs)) if rf else _merge(jnp.maximum)), {}


@register("Minimum")
def minimum(config: dict, weights: dict, rf: bool):
    return ((lambda p, xs: _mean(xs)) if rf else _merge(jnp.minimum)), {}


@register("Concatenate")
def concatenate(config: dict, weights: dict, rf: bool):
    axis = int(config.get("axis", -1))
    return (lambda p, xs: jnp.concatenate(xs, axis=axis)), {}


# --------------------------------------------------------------------------- keras.applications' own layers


@register("CustomScaleLayer")
def custom_scale_layer(config: dict, weights: dict, rf: bool):
    """InceptionResNetV2's residual scaling: ``inputs[0] + inputs[1] * scale``."""
    scale = float(config["scale"])
    return (lambda p, xs: xs[0] + xs[1] * scale), {}


@register("LayerScale", unread=("init_values", "projection_dim"))  # gamma holds both
def layer_scale(config: dict, weights: dict, rf: bool):
    """ConvNeXt's per-channel scale ``x * gamma`` (``gamma`` = 1 in RF mode)."""
    gamma = weights["gamma"]
    return (lambda p, x: x * p["gamma"]), {"gamma": np.ones_like(gamma) if rf else gamma}


# --------------------------------------------------------------------------- Lambda (unsafe mode only)


@register("Lambda")
def lambda_layer(config: dict, weights: dict, rf: bool):
    """Runs the layer's Python function on JAX arrays (only with ``safe_mode=False``;
    works when the function uses plain operators or ``jax.numpy``)."""
    fn, kwargs = config["function"], dict(config.get("arguments") or {})
    return (lambda p, x: fn(x, **kwargs)), {}
