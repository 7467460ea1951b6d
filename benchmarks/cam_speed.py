"""Per-image time of Grad-CAM, Score-CAM and Faster-Score-CAM on ResNet50 at 224, top-3 classes:
rfjax against tf-keras-vis and pytorch-grad-cam, each way in a fresh process.

    .venv/bin/python benchmarks/cam_speed.py              # Grad-CAM, Faster-Score-CAM, metrics: ~10 min on 2 cores
    .venv/bin/python benchmarks/cam_speed.py --methods grad_cam score_cam faster_score_cam metrics \
        --images-grad 32 --images-score 1 --images-faster 1 --images-metrics 2 --readme docs/cam.md   # full
    .venv/bin/python benchmarks/cam_speed.py --images-grad 4 --methods grad_cam faster_score_cam   # smoke

Defaults (about 10 minutes on 2 shared cores): Grad-CAM on 32 images (2 steady repeats),
Faster-Score-CAM on 1 image, metrics on 2 images (1 steady repeat each). Score-CAM with all
2048 channels is opt-in (``--methods ... score_cam``): it is 2048 masked forward passes per
image for rfjax and 3 x 2048 for each peer (one call per class), first call and one repeat:
of the order of an hour for one image and the four ways on 2 cores.

Models (random weights, no download):

* Keras: ``keras.applications.ResNet50(weights=None)`` (1000 classes, softmax head) after
  ``keras.utils.set_random_seed(0)``; explained layer ``conv5_block3_out`` (7 x 7 x 2048).
  rfjax converts it with :func:`converters.from_keras` and explains the logits of
  ``predictions`` (the softmax split off); tf-keras-vis gets the Keras model itself with its
  ``ReplaceToLinear`` model modifier (logits too). Every child reports a checksum of the
  weights and the parent checks the Keras children built the same ones.
* PyTorch: ``torchvision.models.resnet50(weights=None)`` after ``torch.manual_seed(0)``,
  eval mode; explained layer ``layer4`` (its last block's output), logits ``fc``. rfjax
  converts it with :func:`converters.from_torch` (``outputs=["layer4", "fc"]``);
  pytorch-grad-cam gets the module with ``target_layers=[model.layer4[-1]]``.

Images: ``(N, 224, 224, 3)`` smooth random fields (an 8 x 8 x 3 standard normal grid
bilinearly enlarged, plus 0.1 white noise), image ``i`` from seed ``(0, i)``, so the first
``n`` images are the same for every ``n`` and every way of a method gets the same ones
(PyTorch ways: the same array transposed to NCHW). No preprocessing (the models are random).

What one timed call is, per way (the classes are each image's 3 largest logits):

* rfjax (``rfjax.grad_cam`` / ``score_cam`` / ``score_cam(channels=64)``): one call with
  ``top_k=3``, which finds the classes itself and explains all three in one program;
  ``max_memory`` = ``--max-memory-gib`` (4 GiB), ``placement="resize"`` (a plain bilinear
  resize to 224, what the peers do; RF placement would add one RF measurement). Score-CAM:
  ``masks="corners"`` (the peers' corner-aligned bilinear masks) and ``weighting="softmax"``
  on the PyTorch model (pytorch-grad-cam's), ``"probability"`` on the Keras model
  (tf-keras-vis'). rfjax's Score-CAM runs each masked image once and reads all 3 classes
  off its logits.
* pytorch-grad-cam 1.5.7 (``GradCAM``, ``ScoreCAM``): its API takes one target per image
  per call (``ClassifierOutputTarget``), so top-3 is **3 calls**, one per rank; the classes
  are found by one forward pass **outside** the timed call (a cost rfjax's time includes).
  Its Grad-CAM is a forward pass and ``loss.backward()``, which runs back through the whole
  network (the module's parameters require gradients), per call.
  ``ScoreCAM``'s constants: ``batch_size`` attribute absent, so its default 16 masked images
  per forward pass; masks ``UpsamplingBilinear2d`` (corners aligned), normalised with
  ``1e-8``, weights = softmax over channels of the target logit. pytorch-grad-cam has no
  Faster-Score-CAM (its row says so). Each call runs ``K`` masked forward passes per image,
  so top-3 Score-CAM is ``3 K`` forward passes per image.
* tf-keras-vis 0.8.7 (``Gradcam``, ``Scorecam``): ``ReplaceToLinear`` model modifier,
  ``penultimate_layer="conv5_block3_out"`` with ``seek_penultimate_conv_layer=False`` (by
  default it would seek back to the convolution ``conv5_block3_3_conv``, before the residual
  add and ReLU, another layer than rfjax explains), ``CategoricalScore`` with one class per image,
  so top-3 is **3 calls** (classes found outside the timed call, as above). ``Scorecam``:
  ``batch_size=32`` (its default), masks by ``scipy.ndimage.zoom(order=1)``, normalised
  with ``K.epsilon()`` (1e-7), weights = softmax probability of the class;
  Faster-Score-CAM is ``max_N=64``: the union over the batch of each image's 64 channels of
  largest standard deviation (64 channels per image only when the batch is one image).
  Every call expands and normalises the maps (its defaults). It is found on ``PYTHONPATH``
  or in the folder ``TF_KERAS_VIS_TARGET`` names (``pip install --target DIR --no-deps
  tf-keras-vis deprecated imageio``); without it its rows say "not runnable".
* Metrics: ``rfjax.cam_metrics`` (Average Drop / Increase, Deletion / Insertion AUC with 32
  steps, ROAD at ``--road-percentiles``, softmax probability scores) of the first class's
  Grad-CAM map of the first ``--images-metrics`` images of the Grad-CAM batch; the map is
  computed before the timed call. pytorch-grad-cam has no Deletion / Insertion; its
  ROAD (``ROADMostRelevantFirstAverage`` + ``ROADLeastRelevantFirstAverage`` at the same
  percentiles, ``ClassifierOutputSoftmaxTarget``) on its own Grad-CAM maps of the same
  images is timed as the nearest equivalent (a subset of what ``cam_metrics`` computes:
  ROAD only, no deletion / insertion curves, no Average Drop). tf-keras-vis has no metrics.

Each (method, way) runs in its own child process (like ``benchmarks/run.py``): "setup" is
building and converting the model (not timed in the rows); "first call" is the first timed
call (tracing and XLA compilation included for rfjax, tf.function tracing for tf-keras-vis);
"steady" is the median of ``--repeats`` further calls (``--repeats-score`` for Score-CAM and
Faster-Score-CAM); **per-image time = steady / images** (or first call / images when there
are no repeats). "peak RSS" is the child's ``ru_maxrss`` (libraries and model included; the
RSS after setup is in the JSON). The parent cross-checks the maps of ways on the same model
(rfjax vs pytorch-grad-cam on torchvision, rfjax vs tf-keras-vis on Keras): both min-max
scaled per map, the largest absolute difference and the smallest Pearson correlation over
images and classes, and that the classes agree.

Writes ``benchmarks/results/cam_speed.json`` and ``.md``; ``--readme FILE`` replaces the
text between ``<!-- bench:cam_speed:start -->`` and ``<!-- bench:cam_speed:end -->``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script: ``benchmarks`` is importable from the repo root
    sys.path.insert(0, str(ROOT))

from benchmarks.run import header_line, machine, replace_in_readme, run_child

RESULT_TAG = "CAM-SPEED-RESULT "
SIZE = 224
TOP_K = 3
FASTER_N = 64
KERAS_LAYER, KERAS_LOGITS = "conv5_block3_out", "predictions"
TORCH_LAYER, TORCH_LOGITS = "layer4", "fc"
TKV_ENV = "TF_KERAS_VIS_TARGET"


@dataclasses.dataclass(frozen=True)
class Way:
    """``lib`` is ``"rfjax"``, ``"tkv"`` (tf-keras-vis) or ``"pgc"`` (pytorch-grad-cam);
    ``model`` is ``"keras"`` or ``"torch"``."""

    lib: str
    model: str
    label: str


WAYS: dict[str, Way] = {
    "rfjax_keras": Way("rfjax", "keras", "rfjax (from_keras, Keras ResNet50)"),
    "tf_keras_vis": Way("tkv", "keras", "tf-keras-vis 0.8.7 (Keras ResNet50)"),
    "rfjax_torch": Way("rfjax", "torch", "rfjax (from_torch, torchvision ResNet50)"),
    "pytorch_grad_cam": Way("pgc", "torch", "pytorch-grad-cam 1.5.7 (torchvision ResNet50)"),
}
METHODS = {
    "grad_cam": "Grad-CAM",
    "score_cam": "Score-CAM (all 2048 channels)",
    "faster_score_cam": f"Faster-Score-CAM (N={FASTER_N})",
    "metrics": "Faithfulness metrics of the Grad-CAM maps",
}
#: the methods run by default (about 10 minutes on 2 cores with the default image counts)
DEFAULT_METHODS = ("grad_cam", "faster_score_cam", "metrics")
#: what the peers do not offer: (method, way) -> the row's text
NOT_OFFERED = {
    ("faster_score_cam", "pytorch_grad_cam"): "not offered (pytorch-grad-cam has no Faster-Score-CAM)",
    ("metrics", "tf_keras_vis"): "not offered (tf-keras-vis has no faithfulness metrics)",
}


def images(n: int) -> np.ndarray:
    """``(n, 224, 224, 3)`` float32 smooth random images; image ``i`` from seed ``(0, i)``."""
    from scipy.ndimage import zoom

    out = np.empty((n, SIZE, SIZE, 3), np.float32)
    for i in range(n):
        rng = np.random.default_rng([0, i])
        coarse = rng.standard_normal((8, 8, 3))
        out[i] = zoom(coarse, (SIZE / 8, SIZE / 8, 1), order=1) + 0.1 * rng.standard_normal((SIZE, SIZE, 3))
    return out


def rss_mib() -> float:
    """This process's peak resident set size (``ru_maxrss``, KiB on Linux) in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def tkv_path() -> tuple[str | None, str]:
    """``(extra PYTHONPATH entry or "", why)``; ``(None, reason)`` when tf-keras-vis is absent."""
    if importlib.util.find_spec("tf_keras_vis") is not None:
        return "", ""
    target = os.environ.get(TKV_ENV)
    if target and (Path(target) / "tf_keras_vis").is_dir():
        return target, ""
    return None, (
        "not runnable: tf-keras-vis not installed (pip install --target DIR --no-deps tf-keras-vis "
        f"deprecated imageio, then {TKV_ENV}=DIR)"
    )


# --------------------------------------------------------------------------- child


def keras_resnet50() -> Any:
    import keras

    keras.utils.set_random_seed(0)
    return keras.applications.ResNet50(weights=None, input_shape=(SIZE, SIZE, 3))


def torch_resnet50() -> Any:
    import torch
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval()


def checksum(arrays: list[np.ndarray]) -> float:
    return float(sum(np.abs(np.asarray(a, np.float64)).sum() for a in arrays))


def _scaled(maps: np.ndarray) -> np.ndarray:
    """Min-max scaled per map over the last two axes (what the peers return)."""
    m = maps - maps.min(axis=(-2, -1), keepdims=True)
    return (m / (m.max(axis=(-2, -1), keepdims=True) + 1e-7)).astype(np.float32)


def _top3(logits: np.ndarray) -> np.ndarray:
    return np.argsort(-logits, axis=1, kind="stable")[:, :TOP_K]


class Child:
    """One way of one method: ``setup()`` builds everything, ``call()`` is what is timed and
    returns ``(maps (N, 3, H, W) or metric summary, classes (N, 3))``."""

    def __init__(self, method: str, way: str, n: int, max_memory: int, percentiles: list[float]):
        self.method, self.way, self.spec = method, way, WAYS[way]
        self.x = images(n)
        self.max_memory, self.percentiles = max_memory, percentiles
        self.extra: dict[str, Any] = {}

    # ----- setups
    def setup(self) -> Callable[[], Any]:
        return getattr(self, f"_setup_{self.spec.lib}")()

    def _setup_rfjax(self) -> Callable[[], Any]:
        import converters
        import rfjax

        t0 = time.perf_counter()
        if self.spec.model == "keras":
            km = keras_resnet50()
            self.extra["weights_checksum"] = checksum(km.get_weights())
            model = converters.from_keras(km, outputs=[KERAS_LAYER, KERAS_LOGITS])
            layer, logits = KERAS_LAYER, KERAS_LOGITS
        else:
            tm = torch_resnet50()
            self.extra["weights_checksum"] = checksum([p.detach().numpy() for p in tm.state_dict().values()])
            model = converters.from_torch(
                tm, outputs=[TORCH_LAYER, TORCH_LOGITS], input_shape=(SIZE, SIZE, 3)
            )
            layer, logits = TORCH_LAYER, TORCH_LOGITS
        self.extra["conversion_s"] = time.perf_counter() - t0
        x, mm = self.x, self.max_memory
        common = {"layer": layer, "logits": logits, "top_k": TOP_K, "placement": "resize", "max_memory": mm}
        if self.method == "grad_cam":
            return lambda: _maps_of(rfjax.grad_cam(model, x, **common))
        if self.method in ("score_cam", "faster_score_cam"):
            weighting = "probability" if self.spec.model == "keras" else "softmax"
            channels = FASTER_N if self.method == "faster_score_cam" else None
            return lambda: _maps_of(
                rfjax.score_cam(model, x, channels=channels, masks="corners", weighting=weighting, **common)
            )
        r = rfjax.grad_cam(model, x, **common)  # the map measured, before the timed call
        pct = self.percentiles

        def metrics():
            m = rfjax.cam_metrics(model, x, r, logits=logits, percentiles=pct, max_memory=mm)
            return m.mean()._asdict(), r.classes

        return metrics

    def _setup_pgc(self) -> Callable[[], Any]:
        import torch
        from pytorch_grad_cam import GradCAM, ScoreCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

        os.environ.setdefault("TQDM_DISABLE", "1")
        tm = torch_resnet50()
        self.extra["weights_checksum"] = checksum([p.detach().numpy() for p in tm.state_dict().values()])
        xt = torch.from_numpy(np.ascontiguousarray(self.x.transpose(0, 3, 1, 2)))
        with torch.no_grad():
            classes = _top3(tm(xt).numpy())  # outside the timed call
        cls = {"grad_cam": GradCAM, "score_cam": ScoreCAM, "metrics": GradCAM}[self.method]
        cam = cls(model=tm, target_layers=[tm.layer4[-1]])
        self._keep = cam

        def maps():
            out = [cam(input_tensor=xt, targets=[ClassifierOutputTarget(int(c)) for c in classes[:, j]])
                   for j in range(TOP_K)]  # fmt: skip
            return {"maps": np.stack(out, axis=1)}, classes

        if self.method != "metrics":
            return maps
        from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage

        first = cam(input_tensor=xt, targets=[ClassifierOutputTarget(int(c)) for c in classes[:, 0]])
        targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes[:, 0]]
        morf = ROADMostRelevantFirstAverage(percentiles=self.percentiles)
        lerf = ROADLeastRelevantFirstAverage(percentiles=self.percentiles)

        def metrics():
            a = morf(xt, first, targets, tm)
            b = lerf(xt, first, targets, tm)
            return {"road_morf": float(np.mean(a)), "road_lerf": float(np.mean(b))}, classes

        return metrics

    def _setup_tkv(self) -> Callable[[], Any]:
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.scorecam import Scorecam
        from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
        from tf_keras_vis.utils.scores import CategoricalScore

        km = keras_resnet50()
        self.extra["weights_checksum"] = checksum(km.get_weights())
        classes = _top3(np.asarray(km.predict(self.x, verbose=0)))  # outside the timed call
        x = self.x
        if self.method == "grad_cam":
            g = Gradcam(km, model_modifier=ReplaceToLinear(), clone=True)
            call = lambda score: g(score, x, penultimate_layer=KERAS_LAYER, seek_penultimate_conv_layer=False)
        else:
            s = Scorecam(km, model_modifier=ReplaceToLinear(), clone=True)
            max_n = FASTER_N if self.method == "faster_score_cam" else None
            call = lambda score: s(
                score, x, penultimate_layer=KERAS_LAYER, seek_penultimate_conv_layer=False, max_N=max_n
            )

        def maps():
            out = [np.asarray(call(CategoricalScore([int(c) for c in classes[:, j]]))) for j in range(TOP_K)]
            return {"maps": np.stack(out, axis=1)}, classes

        return maps


def _maps_of(r: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
    return {"maps": np.asarray(r.upsampled), "feature": np.asarray(r.maps)}, np.asarray(r.classes)


def child(
    method: str, way: str, n: int, repeats: int, max_memory: int, percentiles: list[float], work: Path
) -> None:
    c = Child(method, way, n, max_memory, percentiles)
    t0 = time.perf_counter()
    call = c.setup()
    setup_s = time.perf_counter() - t0
    rss_setup = rss_mib()
    t0 = time.perf_counter()
    result, classes = call()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    out: dict[str, Any] = {
        "images": n,
        "setup_s": setup_s,
        "first_call_s": first,
        "times_s": times,
        "steady_median_s": statistics.median(times) if times else None,
        "rss_setup_mib": rss_setup,
        "peak_rss_mib": rss_mib(),
        **c.extra,
    }
    if method == "metrics":
        out["metrics"] = result
    else:
        np.save(work / f"{method}.{way}.maps.npy", _scaled(np.asarray(result["maps"], np.float32)))
        if "feature" in result:  # rfjax's maps at 7 x 7, expanded as tf-keras-vis does for that check
            np.save(work / f"{method}.{way}.feature.npy", np.asarray(result["feature"], np.float32))
    np.save(work / f"{method}.{way}.classes.npy", np.asarray(classes))
    print(RESULT_TAG + json.dumps(out), flush=True)


# --------------------------------------------------------------------------- parent


def run_way(method: str, way: str, n: int, repeats: int, args: argparse.Namespace, work: Path) -> dict:
    if (method, way) in NOT_OFFERED:
        return {"skipped": True, "error": NOT_OFFERED[(method, way)]}
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["TQDM_DISABLE"] = "1"
    env.pop("TF_USE_LEGACY_KERAS", None)
    paths = [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    if WAYS[way].lib == "tkv":
        extra, why = tkv_path()
        if extra is None:
            return {"skipped": True, "error": why}
        if extra:
            paths.append(extra)  # after the repo and the venv's own packages
    env["PYTHONPATH"] = os.pathsep.join(paths)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, way]
    cmd += ["--n", str(n), "--repeats", str(repeats), "--work", str(work)]
    cmd += ["--max-memory-gib", str(args.max_memory_gib), "--road-percentiles"]
    cmd += [str(p) for p in args.road_percentiles]
    return run_child(cmd, env, args.timeout, RESULT_TAG)


def per_image(r: dict) -> float | None:
    t = r.get("steady_median_s") or r.get("first_call_s")
    return None if t is None else t / r["images"]


def cross_check(method: str, results: dict[str, dict], work: Path) -> dict[str, dict]:
    """Per model: the rfjax way against the peer on the same model (maps and classes)."""
    checks: dict[str, dict] = {}
    for model in ("keras", "torch"):
        ways = [w for w in results if WAYS[w].model == model and "first_call_s" in results[w]]
        ours = [w for w in ways if WAYS[w].lib == "rfjax"]
        peers = [w for w in ways if WAYS[w].lib != "rfjax"]
        if not ours or not peers:
            continue
        a_cls = np.load(work / f"{method}.{ours[0]}.classes.npy")
        b_cls = np.load(work / f"{method}.{peers[0]}.classes.npy")
        check: dict[str, Any] = {
            "ways": [ours[0], peers[0]],
            "classes_agree": bool(np.array_equal(a_cls, b_cls)),
        }
        if method == "metrics":
            check["road"] = {
                w: {k: v for k, v in results[w]["metrics"].items() if "road" in k}
                for w in (ours[0], peers[0])
            }
        else:
            a = np.load(work / f"{method}.{ours[0]}.maps.npy")
            if WAYS[peers[0]].lib == "tkv":  # tf-keras-vis expands by zoom(order=1), corners aligned
                a = _scaled(_tkv_expand(np.load(work / f"{method}.{ours[0]}.feature.npy")))
            a = a.reshape(-1, SIZE * SIZE).astype(np.float64)
            b = np.load(work / f"{method}.{peers[0]}.maps.npy").reshape(-1, SIZE * SIZE).astype(np.float64)
            check["max_abs_diff"] = float(np.abs(a - b).max())
            ac, bc = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
            denom = np.sqrt((ac**2).sum(1) * (bc**2).sum(1))
            corr = np.where(denom > 0, (ac * bc).sum(1) / np.where(denom > 0, denom, 1), np.nan)
            check["min_correlation"] = float(np.nanmin(corr)) if np.isfinite(corr).any() else None
            check["constant_maps"] = int((denom == 0).sum())
        checks[model] = check
    # same weights on the same model
    for model in ("keras", "torch"):
        sums = {
            w: r["weights_checksum"]
            for w, r in results.items()
            if WAYS[w].model == model and "weights_checksum" in r
        }
        if len({round(v, 3) for v in sums.values()}) > 1:
            checks.setdefault(model, {})["weights_differ"] = sums
    return checks


def _tkv_expand(feature: np.ndarray) -> np.ndarray:
    """``(N, k, h, w)`` maps expanded to the input as tf-keras-vis does: ``scipy.ndimage.zoom``
    with ``order=1`` (corners aligned)."""
    from scipy.ndimage import zoom

    n, k, h, w = feature.shape
    return zoom(feature.reshape(n * k, h, w), (1, SIZE / h, SIZE / w), order=1).reshape(n, k, SIZE, SIZE)


def _fmt(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _check_text(check: dict, method: str) -> str:
    if not check:
        return ""
    parts = []
    if "weights_differ" in check:
        parts.append("**weights differ**")
    if not check.get("classes_agree", True):
        parts.append("**classes differ**")
    if method == "metrics" and "road" in check:
        parts.append(
            "ROAD MoRF / LeRF "
            + " vs ".join(f"{v['road_morf']:.3f} / {v['road_lerf']:.3f}" for v in check["road"].values())
        )
    elif "max_abs_diff" in check:
        parts.append(
            f"maps vs peer: max diff {check['max_abs_diff']:.3g}, min corr {_fmt(check['min_correlation'])}"
        )
    return "; ".join(parts)


def markdown(
    all_results: dict[str, dict[str, dict]], checks: dict[str, dict], m: dict, args: argparse.Namespace
) -> str:
    lines = [
        (
            f"**ResNet50 at {SIZE}x{SIZE}, top-{TOP_K} classes per image**, random weights (seeded), generated images; "
            f'rfjax with `max_memory={args.max_memory_gib:g} GiB`, `placement="resize"`.'
        ),
        "",
        header_line(m)
        + f" torch {m.get('torch')}, torchvision {m.get('torchvision')}, torchax {m.get('torchax')}, "
        f"grad-cam {m.get('grad_cam')}, tf-keras-vis {m.get('tf_keras_vis')}.",
        "",
        (
            "| method | way | images | first call s | steady s | per image s | peak RSS MiB | RSS growth MiB | "
            "speed-up vs fastest peer | check |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for method, results in all_results.items():
        peer_times = [
            per_image(r) for w, r in results.items() if WAYS[w].lib != "rfjax" and "first_call_s" in r
        ]
        peer_times = [t for t in peer_times if t]
        fastest = min(peer_times) if peer_times else None
        for way, r in results.items():
            head = f"| {METHODS[method]} | {WAYS[way].label} |"
            if "first_call_s" not in r:
                lines.append(f"{head} | {r['error']} | | | | | | |")
                continue
            t = per_image(r)
            speed = f"{fastest / t:.1f}x" if (WAYS[way].lib == "rfjax" and fastest and t) else ""
            chk = (
                _check_text(checks.get(method, {}).get(WAYS[way].model, {}), method)
                if WAYS[way].lib == "rfjax"
                else ""
            )
            lines.append(
                f"{head} {r['images']} | {_fmt(r['first_call_s'], 2)} | {_fmt(r.get('steady_median_s'), 2)} | "
                f"{_fmt(t, 3)} | {r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] - r['rss_setup_mib']:.0f} | "
                f"{speed} | {chk} |"
            )
    lines += [
        "",
        (
            "Each way runs in a fresh process; first call includes compilation (rfjax) or tracing; steady = median "
            f"of {args.repeats} further calls ({args.repeats_score} for Score-CAM and Faster-Score-CAM, "
            f"{args.repeats_metrics} for the metrics); per image = steady / images (first call / images without "
            "repeats); peak RSS = the process's ru_maxrss (libraries and model included), RSS growth = peak RSS "
            "minus the RSS after setup (model built and converted, before the first call). rfjax explains the 3 classes in one call (`top_k=3`); pytorch-grad-cam and "
            "tf-keras-vis take one class per image per call, so their time is 3 calls, with the classes found "
            "outside the timed calls. Speed-up = the fastest peer's per-image time / rfjax's. Maps are compared "
            "min-max scaled with the peer on the same model (for tf-keras-vis, rfjax's 7 x 7 maps expanded with "
            "its corner-aligned zoom; pytorch-grad-cam's half-pixel bilinear resize is rfjax's "
            '`placement="resize"`).'
        ),
        "",
        (
            f"Metrics: rfjax.cam_metrics (Average Drop / Increase, Deletion / Insertion AUC with 32 steps, ROAD at "
            f"{len(args.road_percentiles)} percentile(s)) of the first class's Grad-CAM map; pytorch-grad-cam: its ROAD "
            "MoRF + LeRF averages at the same percentiles (it has no Deletion / Insertion), a subset of that work."
        ),
    ]
    for method, by_model in checks.items():
        for model, c in by_model.items():
            if "weights_differ" in c:
                lines += ["", f"**{method}, {model}: the children's weights differ:** {c['weights_differ']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--methods", nargs="+", choices=list(METHODS), default=list(DEFAULT_METHODS),
        help="default: all but score_cam (all 2048 channels: add it for the full run, see the docstring)",
    )  # fmt: skip
    ap.add_argument("--ways", nargs="+", choices=list(WAYS), default=list(WAYS))
    ap.add_argument("--images-grad", type=int, default=32, help="images for Grad-CAM (default 32)")
    ap.add_argument(
        "--images-score", type=int, default=1, help="images for Score-CAM, all channels (default 1)"
    )
    ap.add_argument("--images-faster", type=int, default=1, help="images for Faster-Score-CAM (default 1)")
    ap.add_argument(
        "--images-metrics",
        type=int,
        default=2,
        help="first images of the Grad-CAM batch for the metrics (default 2)",
    )
    ap.add_argument(
        "--repeats", type=int, default=2, help="steady calls after the first, Grad-CAM (default 2)"
    )
    ap.add_argument(
        "--repeats-score", type=int, default=1, help="steady calls after the first, Score-CAMs (default 1)"
    )
    ap.add_argument(
        "--repeats-metrics", type=int, default=1, help="steady calls after the first, metrics (default 1)"
    )
    ap.add_argument("--max-memory-gib", type=float, default=4.0, help="rfjax's max_memory (default 4 GiB)")
    ap.add_argument(
        "--road-percentiles", type=float, nargs="+", default=[10, 20, 30, 40, 50, 60, 70, 80, 90],
        help="ROAD percentiles of both libraries' metrics (default 10 ... 90)",
    )  # fmt: skip
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per way (default 3600)")
    ap.add_argument("--readme", type=Path, help="update the bench:cam_speed block of this Markdown file")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "WAY"), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    max_memory = int(args.max_memory_gib * 2**30)
    if args.child:
        child(
            args.child[0], args.child[1], args.n, args.repeats, max_memory, args.road_percentiles, args.work
        )
        return 0

    m = machine()
    m["grad_cam"] = version("grad-cam")
    tkv, _ = tkv_path()
    m["tf_keras_vis"] = _tkv_version(tkv) if tkv else (version("tf-keras-vis") if tkv == "" else "absent")
    print(header_line(m))
    counts = {
        "grad_cam": args.images_grad,
        "score_cam": args.images_score,
        "faster_score_cam": args.images_faster,
        "metrics": args.images_metrics,
    }
    status = 0
    all_results: dict[str, dict[str, dict]] = {}
    checks: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="cam_speed_") as tmp:
        work = Path(tmp)
        for method in args.methods:
            repeats = {"score_cam": args.repeats_score, "faster_score_cam": args.repeats_score}.get(
                method, args.repeats_metrics if method == "metrics" else args.repeats
            )
            results: dict[str, dict] = {}
            for way in args.ways:
                print(f"[{method}] {way} ({counts[method]} images) ...", end=" ", flush=True)
                r = run_way(method, way, counts[method], repeats, args, work)
                results[way] = r
                if "first_call_s" in r:
                    print(
                        f"first {r['first_call_s']:.2f} s, steady {_fmt(r['steady_median_s'], 2)} s, "
                        f"per image {_fmt(per_image(r))} s, peak RSS {r['peak_rss_mib']:.0f} MiB"
                    )
                else:
                    print(r["error"])
                    status = status or (0 if r.get("skipped") else 1)
            all_results[method] = results
            checks[method] = cross_check(method, results, work)
    md = markdown(all_results, checks, m, args)
    print()
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": m,
        "images": counts,
        "repeats": args.repeats,
        "repeats_score": args.repeats_score,
        "repeats_metrics": args.repeats_metrics,
        "max_memory_gib": args.max_memory_gib,
        "road_percentiles": args.road_percentiles,
        "methods": {
            method: {w: {"label": WAYS[w].label, **r} for w, r in results.items()}
            for method, results in all_results.items()
        },
        "checks": checks,
    }
    (args.out / "cam_speed.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / "cam_speed.md").write_text(md)
    print(f"wrote {args.out / 'cam_speed.json'} and {args.out / 'cam_speed.md'}")
    if args.readme is not None and not replace_in_readme(args.readme, "cam_speed", md):
        status = 1
    return status


def _tkv_version(target: str) -> str:
    for p in Path(target).glob("tf_keras_vis-*.dist-info"):
        return p.name[len("tf_keras_vis-") : -len(".dist-info")]
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
