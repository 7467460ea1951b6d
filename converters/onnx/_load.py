"""Reading an ONNX file: the protobuf, its external data and its opset, with one-sentence
errors that name the file."""

from __future__ import annotations

import os
from typing import Any

from rfjax.errors import RFError

MIN_OPSET = 7


def load(model: Any) -> tuple[Any, str]:
    """``(ModelProto, source label)`` for a path or a ``ModelProto``; external data
    is read from the path's folder (a ModelProto's must already be loaded)."""
    try:
        import onnx
    except ImportError as e:
        raise RFError("reading ONNX models needs the onnx package: pip install 'rfjax[onnx]'.") from e
    from google.protobuf.message import DecodeError
    from onnx import external_data_helper

    if isinstance(model, onnx.ModelProto):
        proto, source, folder = model, "the ModelProto", None
    elif isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        source = repr(path)
        if not os.path.isfile(path):
            raise RFError(f"model file {source} does not exist.")
        try:
            proto = onnx.load(path, load_external_data=False)
        except (DecodeError, RuntimeError, ValueError) as e:
            raise RFError(f"{source} is not an ONNX model or is truncated ({type(e).__name__}: {e}).") from e
        folder = os.path.dirname(os.path.abspath(path))
    else:
        raise RFError(f"model must be an .onnx path or an onnx.ModelProto, not {type(model).__name__}.")
    if not proto.graph.node or proto.ir_version <= 0:
        raise RFError(f"{source} is not an ONNX model or is truncated: it holds no graph.")
    external = [t for t in proto.graph.initializer if external_data_helper.uses_external_data(t)]
    if external:
        if folder is None:
            raise RFError(
                f"initializer {external[0].name!r} of {source} is stored in an external file; pass the .onnx path "
                "so its data can be found next to it, or load it with onnx.load first."
            )
        proto = _with_external_data(proto, external, folder, source)
    return proto, source


def _with_external_data(proto: Any, tensors: list, folder: str, source: str) -> Any:
    from onnx import external_data_helper

    for t in tensors:
        info = {e.key: e.value for e in t.external_data}
        where = os.path.join(folder, info.get("location", ""))
        if not os.path.isfile(where):
            raise RFError(
                f"initializer {t.name!r} of {source} is stored in {info.get('location')!r}, which is not in {folder!r}; "
                "put the external data file next to the model."
            )
    try:
        external_data_helper.load_external_data_for_model(proto, folder)
    except (OSError, ValueError) as e:
        raise RFError(f"the external data of {source} could not be read ({type(e).__name__}: {e}).") from e
    return proto


def opset_of(proto: Any, source: str) -> int:
    """The default-domain opset version, checked against what rfjax and onnx know."""
    from onnx import defs

    versions = {o.domain: o.version for o in proto.opset_import}
    version = versions.get("", versions.get("ai.onnx"))
    newest = defs.onnx_opset_version()
    if version is None or not MIN_OPSET <= version <= newest:
        raise RFError(
            f"{source} uses opset {version} of the default ONNX domain; rfjax reads opsets {MIN_OPSET} to {newest} "
            "(convert it with onnx.version_converter.convert_version)."
        )
    return int(version)
