"""Local devices: how many a call uses, and a batch axis sharded over them.

Every batch of rfjax is a leading array axis whose items are independent: the engine's
output-cell slots, the CAM pipeline's images, SmoothGrad's noisy copies and Integrated
Gradients' path points, the perturbed copies of Score-CAM, Ablation-CAM and the
faithfulness metrics. That axis is split into equal chunks under the memory budget
(:func:`rfjax.memory.plan_chunks`, chunk sizes a multiple of the device count), and each
chunk is split over the first ``n`` local devices with :func:`jax.shard_map` on a
one-axis mesh (:func:`mesh`): every device runs the same program on its share of the
items, the other arguments replicated. Results do not depend on the device count (up to
the order of float additions in :func:`mean_over`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from rfjax.contract import on_clear
from rfjax.errors import RFError

#: Name of the one mesh axis the batch is split over.
AXIS = "batch"


def count(devices: int | None) -> int:
    """The number of local devices to use: ``devices``, or all of them when ``None``;
    :class:`RFError` outside ``1..jax.local_device_count()``."""
    avail = jax.local_device_count()
    if devices is None:
        return avail
    if isinstance(devices, bool) or not isinstance(devices, int) or not 1 <= devices <= avail:
        raise RFError(f"devices={devices!r} must be between 1 and the {avail} local device(s).")
    return devices


def for_items(devices: int | None, items: int) -> int:
    """Devices for a batch of ``items``: :func:`count`, but no more than the items (one
    image on 8 devices runs on one, not padded to 8 copies)."""
    return max(1, min(count(devices), items))


@functools.lru_cache(maxsize=16)
def mesh(n_devices: int) -> jax.sharding.Mesh:
    """The one-axis (:data:`AXIS`) mesh of the first ``n_devices`` local devices."""
    return jax.make_mesh(
        (n_devices,),
        (AXIS,),
        devices=jax.local_devices()[:n_devices],
        axis_types=(jax.sharding.AxisType.Auto,),
    )


def split(f: Callable, n_devices: int, batched: Sequence[bool]) -> Callable:
    """``f`` with the leading axis of argument ``i`` split over ``n_devices`` local
    devices where ``batched[i]`` (the others replicated) and every output leaf's leading
    axis concatenated back; ``f`` itself for one device. The batched arguments' leading
    axes must be a multiple of ``n_devices`` and ``f`` must treat their items
    independently (reductions over the batch belong on the host: return per-item or
    ``(1,)`` values)."""
    if n_devices <= 1:
        return f
    spec = jax.sharding.PartitionSpec
    return jax.shard_map(
        f,
        mesh=mesh(n_devices),
        in_specs=tuple(spec(AXIS) if b else spec() for b in batched),
        out_specs=spec(AXIS),
        check_vma=False,  # closed-over values and jaxpr re-evaluation carry no varying-axis types
    )


def mean_over(f: Callable, xs: Any, n_devices: int) -> Any:
    """``mean_i f(xs[i])`` over the leading axis of ``xs`` (a pytree), one ``jax.vmap``;
    with ``n_devices > 1`` the axis is split over the devices (padded with zero-weight
    copies of item 0 to a multiple of ``n_devices``) and the partial sums are added with
    ``psum``. ``f`` returns a pytree of arrays; inside a jitted program."""
    if n_devices <= 1:
        return jax.tree.map(lambda v: v.mean(axis=0), jax.vmap(f)(xs))
    n = jax.tree.leaves(xs)[0].shape[0]
    pad = -n % n_devices
    xs = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)]), xs)
    weights = jnp.concatenate([jnp.full((n,), 1.0 / n, jnp.float32), jnp.zeros((pad,), jnp.float32)])

    def local(xs_local, w_local):
        out = jax.vmap(f)(xs_local)
        return jax.tree.map(lambda v: jax.lax.psum(jnp.tensordot(w_local, v, axes=1), AXIS), out)

    spec = jax.sharding.PartitionSpec
    return jax.shard_map(
        local,
        mesh=mesh(n_devices),
        in_specs=(spec(AXIS), spec(AXIS)),
        out_specs=spec(),
        check_vma=False,
    )(xs, weights)


on_clear(mesh.cache_clear)
