"""HiResCAM, XGrad-CAM, Grad-CAM, Eigen-CAM and Eigen-Grad-CAM against pytorch-grad-cam (the
``grad-cam`` package) on the same random-weight PyTorch model and the same targets.

pytorch-grad-cam returns ``scale_cam_image(relu(cam))``: per image ``m - min``, divided by
``1e-7 + max``, then resized with OpenCV to the input size. The feature map here has the
input's size (stride-1 'same' convolutions), so the resize is the identity, and rfjax's maps
(which already end in the same ReLU) are compared after the same scaling. Eigen maps are
compared up to the sign of the singular vector, which pytorch-grad-cam leaves to LAPACK.
"""

from __future__ import annotations

import numpy as np
import pytest

import converters
import rfjax

torch = pytest.importorskip("torch")

nn = torch.nn
CLASSES = [2, 0, 3]


class Net(nn.Module):
    """conv-relu-conv-relu ("a2", 12 x 12 x 8) -> flatten -> linear (4): a head whose gradient
    varies over space."""

    def __init__(self):
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()
        self.c2, self.a2 = nn.Conv2d(6, 8, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(8 * 12 * 12, 4)

    def forward(self, x):
        return self.fc(self.a2(self.c2(self.a1(self.c1(x)))).flatten(1))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = Net().eval()
    x = np.random.default_rng(3).normal(size=(3, 12, 12, 3)).astype(np.float32)
    model = converters.from_torch(net, outputs=["a2", "fc"], input_shape=(12, 12, 3))
    return net, model, x


def _scaled(m):
    m = m - m.min(axis=(-2, -1), keepdims=True)
    return m / (1e-7 + m.max(axis=(-2, -1), keepdims=True))


def test_onnx_export_of_the_same_model_gives_the_same_maps(setup, tmp_path):
    """The ONNX adapter also returns NCHW layers as NHWC transposes: same tap, same maps."""
    pytest.importorskip("onnx")
    from converters import onnx as onnx_adapter

    net, _, x = setup
    path = tmp_path / "net.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, 12, 12),),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
    )
    model = onnx_adapter.from_onnx(str(path)).with_outputs(["/a2/Relu", "y"])
    r = rfjax.hires_cam(model, x, layer="/a2/Relu", logits="y", classes=[[c] for c in CLASSES])
    a, g = _torch_a_g(net, x)
    want = np.maximum((a * g).sum(axis=1), 0)
    np.testing.assert_allclose(r.maps[:, 0], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.fixture(scope="module")
def pgc():
    return pytest.importorskip("pytorch_grad_cam")


def _torch_a_g(net, x, grad=True):
    """PyTorch autograd's features ``A`` at ``a2`` and ``G = d y_c / d A`` (NCHW)."""
    xt = torch.tensor(x.transpose(0, 3, 1, 2))
    a = net.a2(net.c2(net.a1(net.c1(xt))))
    a.retain_grad()
    net.fc(a.flatten(1))[torch.arange(len(x)), torch.tensor(CLASSES)].sum().backward()
    return a.detach().numpy(), a.grad.numpy()


def test_layer_of_a_channels_first_model_is_tapped_where_the_network_reads_it(setup):
    """The adapter returns "a2" as an NHWC transpose of the NCHW value the head reads; the
    tap moves to that value (rfjax.activation_maps.tap.through_transposes)."""
    net, model, x = setup
    r = rfjax.hires_cam(model, x, layer="a2", logits="fc", classes=[[c] for c in CLASSES])
    a, g = _torch_a_g(net, x)
    want = np.maximum((a * g).sum(axis=1), 0)
    np.testing.assert_allclose(r.maps[:, 0], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def _theirs(pgc, cls, net, x):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with cls(model=net, target_layers=[net.a2]) as cam:
        return cam(
            input_tensor=torch.tensor(x.transpose(0, 3, 1, 2)),
            targets=[ClassifierOutputTarget(c) for c in CLASSES],
        )


@pytest.mark.parametrize(
    ("method", "cls_name", "tol"),
    # Grad-CAM's weights are spatial means of gradients of both signs (the flatten head): float32
    # cancellation leaves rfjax 6e-4 from pytorch-grad-cam run in float64 (whose float32 run
    # happens to sum in an order closer to it); the cell-wise methods agree to 1e-5
    [("grad_cam", "GradCAM", 1e-3), ("hires_cam", "HiResCAM", 2e-4), ("xgrad_cam", "XGradCAM", 2e-4)],
)
def test_gradient_methods_match_pytorch_grad_cam(setup, pgc, method, cls_name, tol):
    net, model, x = setup
    r = rfjax.class_activation_maps(
        model, x, method=method, layer="a2", logits="fc", classes=[[c] for c in CLASSES]
    )
    want = _theirs(pgc, getattr(pgc, cls_name), net, x)
    assert want.shape == (3, 12, 12) and r.maps.shape == (3, 1, 12, 12)
    np.testing.assert_allclose(_scaled(r.maps[:, 0]), want, atol=tol)


@pytest.mark.parametrize(("method", "grad"), [("eigen_cam", False), ("eigen_grad_cam", True)])
def test_eigen_methods_match_pytorch_grad_cam_projection_up_to_sign(setup, pgc, method, grad):
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    net, model, x = setup
    r = rfjax.class_activation_maps(
        model, x, method=method, layer="a2", logits="fc", classes=[[c] for c in CLASSES]
    )
    a, g = _torch_a_g(net, x)
    m = a * (g if grad else 1.0)
    proj = get_2d_projection(m)  # pytorch-grad-cam's own centred SVD projection, (N, h, w)
    ours = r.maps[:, 0]
    for n in range(3):
        tol = 2e-4 * np.abs(proj[n]).max()
        err = min(np.abs(ours[n] - np.maximum(s * proj[n], 0)).max() for s in (1.0, -1.0))
        assert err <= tol, (n, err, tol)
