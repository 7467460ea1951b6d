"""Many layers of one converted model measured by a few compiled programs.

Measuring one layer at a time pays a compilation and a forward pass per layer. Here
the layers are put into a few groups by the input size a growing fit needs for them
(the closed-form bound plus four strides, :meth:`~rfjax.contract.ConvertedModel.rf_bound`,
as :func:`rfjax.receptive_field` starts from), and each group is measured by one
:func:`rfjax.receptive_field` call: one engine plan at the group's proven size, one
forward pass of the one-channel RF copy, the central lines and probe cells of every
layer of the group as slots of one vmapped backward program, chunked under the memory
budget. A group in which some layer cannot be measured with the others (a zero-padding
layer's border cells see no input, an RF past the largest input) is split in halves,
down to the single layer, whose own outcome is then exactly what a per-layer fit gives.

Values equal the per-layer answers: each layer is measured by the same fit on the same
function restricted to more outputs, at a size proven to keep the padding of every
layer (:mod:`rfjax.growth`); size, stride and offset are those of the requested input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

from rfjax._types import ReceptiveField
from rfjax.contract import ConvertedModel
from rfjax.errors import RFError
from rfjax.fit import receptive_field

#: the input side grows by this factor from one group to the next: each group's program
#: then costs at most about as much per slot as the largest layers in it need
GROUP_RATIO = 2.0

Outcome = ReceptiveField | RFError


def group_layers(
    model: ConvertedModel, names: Sequence[str], shape: tuple[int, int, int], grow: bool, max_input: int
) -> list[list[str]]:
    """``names`` in groups measured together, each in graph order, smallest input first.

    With ``grow``, a layer needs ``bound + 4 * stride`` pixels per axis (room for two
    unclipped cells whatever the padding); layers that fit the requested input form the
    first group, the others one group per factor :data:`GROUP_RATIO` of size beyond it.
    Without ``grow`` every layer is measured at the requested size: those whose bound
    fits it form one group. A layer without a closed-form bound, or one that cannot fit
    even ``max_input``, is a group of its own (measured as :func:`rfjax.receptive_field`
    measures it alone)."""
    buckets: dict[float, list[str]] = {}
    alone = []
    for name in names:
        bound = model.rf_bound(name)
        if bound is None:
            alone.append(name)
            continue
        pad = 4 if grow else 0
        need = [int(bound.size[a] + pad * bound.stride[a]) for a in (0, 1)]
        scale = max(need[0] / shape[0], need[1] / shape[1])
        if (grow and max(need) > max_input) or (not grow and scale > 1):
            alone.append(name)
            continue
        key = 0.0 if scale <= 1 else float(math.ceil(math.log(scale, GROUP_RATIO)))
        buckets.setdefault(key, []).append(name)
    return [buckets[k] for k in sorted(buckets)] + [[n] for n in alone]


def measure_group(
    model: ConvertedModel, names: list[str], shape: tuple[int, int, int], grow: bool, max_input: int
) -> Iterator[dict[str, Outcome]]:
    """Outcomes of ``names`` (a :class:`~rfjax.ReceptiveField` or the
    :class:`~rfjax.errors.RFError` a per-layer fit raises), yielded as each part is
    done: the whole group in one call, else its halves, recursively."""
    try:
        got = receptive_field(model, shape, outputs=names, grow=grow, max_input=max_input)
    except RFError as e:
        if len(names) == 1:
            yield {names[0]: e}
            return
        half = len(names) // 2
        yield from measure_group(model, names[:half], shape, grow, max_input)
        yield from measure_group(model, names[half:], shape, grow, max_input)
        return
    yield {name: got[name] for name in names} if isinstance(got, dict) else {names[0]: got}


def measure_layers(
    model: ConvertedModel,
    names: Sequence[str],
    shape: tuple[int, int, int],
    *,
    grow: bool,
    max_input: int,
    on_done: Callable[[dict[str, Outcome]], None],
) -> None:
    """Measure every layer of ``names`` group by group (:func:`group_layers`,
    :func:`measure_group`), calling ``on_done`` with each finished part's outcomes."""
    for group in group_layers(model, names, shape, grow, max_input):
        for part in measure_group(model, group, shape, grow, max_input):
            on_done(part)
