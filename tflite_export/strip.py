"""Removing what a TFLite file carries for people and tools but no runtime reads: ``strip``.

The converter names every tensor after the TensorFlow ops it came from (``model/conv2d_1/Relu;model/conv2d_1/
Conv2D``: tens of bytes each, hundreds of tensors in a MobileNet) and adds a ``CONVERSION_METADATA`` entry (the
converter's options and environment). Neither is read when the interpreter loads or runs the file, and neither
shrinks when the weights are compressed. The model's input and output tensors keep their names (apps find them
by name), and so do the signatures.
"""

from __future__ import annotations

from typing import Any

from tflite_export import flatbuffer as fb
from tflite_export._graph import check_flatbuffer

__all__ = ["strip", "REMOVED_METADATA"]

# Metadata entries no runtime reads. ``min_runtime_version`` (16 bytes) stays: tools check it before loading.
REMOVED_METADATA = ("CONVERSION_METADATA",)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


def strip(content: bytes, *, names: bool = True, metadata: bool = True) -> bytes:
    """The same model without the names of its inner tensors and without converter metadata.

    The result computes exactly what ``content`` does (same operators, tensors, buffers and quantization); only
    strings change. Strip before :func:`tflite_export.compress` (a compressed file's offsets are fixed).

    Args:
        content: A TFLite flatbuffer (not a compressed one).
        names: Drop the name of every tensor that is not an input or output of its subgraph.
        metadata: Drop the metadata entries in :data:`REMOVED_METADATA` and their buffers.

    Returns:
        The smaller flatbuffer (``content`` unchanged when there is nothing to remove).

    Raises:
        TypeError: ``content`` is not bytes, or a flag is not a bool.
        ValueError: ``content`` is not a readable TFLite flatbuffer, points at tensors or buffers it does not
            have, or is a compressed file.
    """
    content = check_flatbuffer(content, "content")
    for arg_name, value in (("names", names), ("metadata", metadata)):
        if not isinstance(value, bool):
            raise TypeError(f"`{arg_name}` must be True or False. Received: {arg_name}={value!r}")
    from tflite_export.codebook import is_compressed

    if is_compressed(content):
        raise ValueError("`content` is a compressed file, whose weight offsets are fixed; strip the dense file "
                         "before `tflite_export.compress`. Received: a compressed file of "
                         f"{len(content)} bytes")
    model = fb.read_model(content)
    fb.check_references(model)
    buffers = len(model.buffers or [])
    for entry in model.metadata or []:
        if not 0 <= int(entry.buffer) < buffers:
            raise ValueError(f"`content`: metadata entry {_text(entry.name)!r} names buffer {int(entry.buffer)}; "
                             f"the model has {buffers} buffers")
    outside = [i for i, b in enumerate(model.buffers or []) if int(b.offset or 0) > 1 or int(b.size or 0) > 0]
    if outside:
        # Data past the flatbuffer (large-model files, a loaded compressed file) would not be written back.
        raise ValueError(f"`content` keeps the data of buffers {outside[:8]} past the flatbuffer (offset/size "
                         "fields), which rewriting it would lose; strip the file the converter wrote. Received: "
                         f"a file of {len(content)} bytes")
    changed = False
    if names:
        for subgraph in model.subgraphs:
            kept = {int(i) for i in list(subgraph.inputs if subgraph.inputs is not None else [])
                    + list(subgraph.outputs if subgraph.outputs is not None else [])}
            for i, tensor in enumerate(subgraph.tensors or []):
                if i not in kept and tensor.name:
                    tensor.name = None
                    changed = True
    if metadata and model.metadata:
        removed = [entry for entry in model.metadata if _text(entry.name) in REMOVED_METADATA]
        if removed:
            model.metadata = [entry for entry in model.metadata if _text(entry.name) not in REMOVED_METADATA]
            # A removed entry's buffer goes too, unless something else still points at it (buffer 0 is the
            # schema's empty sentinel and always stays).
            used = {int(t.buffer) for sg in model.subgraphs for t in sg.tensors or []}
            used |= {int(entry.buffer) for entry in model.metadata}
            used |= {int(b) for b in (model.metadataBuffer if model.metadataBuffer is not None else [])}
            fb.remove_buffers(model, {int(e.buffer) for e in removed} - used - {0})
            changed = True
    return fb.write_model(model) if changed else content
