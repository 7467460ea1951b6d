"""Which CAM method to trust: localisation and faithfulness of every method on generated shapes.

    .venv/bin/python benchmarks/cam_faithfulness.py                            # table to stdout
    .venv/bin/python benchmarks/cam_faithfulness.py --readme docs/cam.md       # and into docs

Trains the shapes example's CNN (:func:`rfjax.models.shapes_cnn`: 2000 images of
:func:`rfjax.datasets.shapes`, seed 1, 8 epochs, seeded and deterministic ops) and explains
200 held-out images (seed 2) for their true class with every method, with RF-aware and
with plain-resize placement. Per method and placement it reports:

* the pointing game (the map's peak inside the shape's box) and the mean box IoU (box of
  the map above 0.3 of its maximum against the shape's box): localisation;
* Deletion AUC (lower is better) and Insertion AUC (higher is better) of the class
  probability, 32 steps (Petsiuk et al.), the Average Drop (%, lower is better) and ROAD
  at 50% of the pixels (Rong et al.; MoRF lower is better, LeRF nearer 0 is better):
  faithfulness (:func:`rfjax.cam_metrics`). "s" is the method's own time for the 200
  images, first call (compilation) included.

Writes ``benchmarks/results/cam_faithfulness.json`` and ``.md``; ``--readme FILE`` puts
the table between ``<!-- bench:cam_faithfulness:start -->`` and ``...:end -->`` in FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.run import header_line, machine, replace_in_readme

#: method label -> (rfjax function name, extra keyword arguments)
METHODS = {
    "CAM": ("cam", {}),
    "Grad-CAM": ("grad_cam", {}),
    "Grad-CAM++": ("grad_cam_plus_plus", {}),
    "Layer-CAM": ("layer_cam", {}),
    "HiResCAM": ("hires_cam", {}),
    "XGrad-CAM": ("xgrad_cam", {}),
    "Eigen-CAM": ("eigen_cam", {}),
    "Eigen-Grad-CAM": ("eigen_grad_cam", {}),
    "Score-CAM": ("score_cam", {}),
    "Faster-Score-CAM (16)": ("score_cam", {"channels": 16}),
    "Ablation-CAM": ("ablation_cam", {}),
    "Grad-CAM + SmoothGrad (8)": ("grad_cam", {"smooth": 8}),
    "saliency (input)": ("saliency", {}),
    "Integrated Gradients (input)": ("integrated_gradients", {}),
}
INPUT_METHODS = ("saliency", "integrated_gradients")
#: ROAD at half the pixels only: each percentile is a conjugate-gradient imputation per image
ROAD_PERCENTILES = (50.0,)


def train():
    """The trained shapes CNN converted to JAX, the held-out set and the training time."""
    import keras
    import tensorflow as tf

    import converters
    from rfjax.datasets import shapes
    from rfjax.models import shapes_cnn

    data, held_out = shapes(2000, seed=1), shapes(200, seed=2)
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    model = shapes_cnn()
    model.compile(keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t0 = time.perf_counter()
    model.fit(data.images, data.labels, batch_size=32, epochs=8, verbose=0)
    seconds = time.perf_counter() - t0
    accuracy = float(np.mean(np.argmax(model.predict(held_out.images, verbose=0), 1) == held_out.labels))
    return converters.from_keras(model, outputs=["features", "logits"]), held_out, seconds, accuracy


def score(model, held_out, label: str, placement: str) -> dict:
    """One method at one placement: localisation and faithfulness over the held-out set."""
    import rfjax
    from rfjax import activation_maps as C

    name, extra = METHODS[label]
    kw = {} if name in INPUT_METHODS else {"layer": "features", "placement": placement}
    t0 = time.perf_counter()
    r = getattr(rfjax, name)(
        model, held_out.images, logits="logits", classes=held_out.labels[:, None], **kw, **extra
    )
    seconds = time.perf_counter() - t0
    m = rfjax.cam_metrics(model, held_out.images, r, logits="logits", percentiles=ROAD_PERCENTILES)
    return {
        "method": label,
        "placement": r.placement,
        "pointing": C.pointing_game(r.peaks()[:, 0], held_out.boxes),
        "iou": float(
            np.mean([C.box_iou(C.cam_box(u), b) for u, b in zip(r.upsampled[:, 0], held_out.boxes)])
        ),
        "deletion_auc": float(np.mean(m.deletion_auc)),
        "insertion_auc": float(np.mean(m.insertion_auc)),
        "average_drop": float(np.mean(m.average_drop)),
        "road_morf": float(np.mean(m.road_morf)),
        "road_lerf": float(np.mean(m.road_lerf)),
        "seconds": round(seconds, 2),
    }


def table(rows: list[dict], head: str) -> str:
    lines = [
        head,
        "",
        (
            "| method | placement | pointing game | box IoU | Deletion AUC (lower better) | "
            "Insertion AUC (higher better) | Average Drop % | ROAD MoRF 50% (lower better) | "
            "ROAD LeRF 50% (nearer 0 better) | s |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['placement']} | {r['pointing']:.3f} | {r['iou']:.3f} | {r['deletion_auc']:.3f} "
            f"| {r['insertion_auc']:.3f} | {r['average_drop']:.1f} | {r['road_morf']:.3f} | {r['road_lerf']:.3f} "
            f"| {r['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    ap.add_argument(
        "--readme", type=Path, help="update the bench:cam_faithfulness block of this Markdown file"
    )
    args = ap.parse_args(argv)
    model, held_out, trained, accuracy = train()
    rows = []
    for label in args.methods:
        placements = ("input",) if METHODS[label][0] in INPUT_METHODS else ("rf", "resize")
        for placement in placements:
            rows.append(score(model, held_out, label, placement))
            print(json.dumps(rows[-1]), flush=True)
    m = machine()
    head = (
        f"Shapes CNN trained in {trained:.0f} s (held-out accuracy {accuracy:.3f}); 200 held-out images, "
        f"their true class. {header_line(m)}"
    )
    text = table(rows, head)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "cam_faithfulness.json").write_text(json.dumps({"machine": m, "rows": rows}, indent=1))
    (out / "cam_faithfulness.md").write_text(text)
    print(text)
    if args.readme:
        replace_in_readme(args.readme, "cam_faithfulness", text)


if __name__ == "__main__":
    main()
