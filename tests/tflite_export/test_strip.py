"""tflite_export.strip: fewer bytes, the same model (outputs, delegation, I/O names, signatures), errors."""

import numpy as np
import pytest

import tflite_export
from tests.tflite_export import test_codebook
from tflite_export import flatbuffer as fb
from tflite_export.strip import REMOVED_METADATA, strip

codebook_int8 = test_codebook.codebook_int8  # the session fixture


def _metadata_names(content):
    return sorted(m.name.decode() for m in fb.read_model(content).metadata or [])


def _inner_names(content):
    subgraph = fb.read_model(content).subgraphs[0]
    io = set(subgraph.inputs.tolist()) | set(subgraph.outputs.tolist())
    return [t.name for i, t in enumerate(subgraph.tensors) if i not in io and t.name]


def test_strip_keeps_the_model_and_drops_names_and_converter_metadata(ptq_int8, digits):
    stripped = strip(ptq_int8)
    assert _inner_names(ptq_int8) and not _inner_names(stripped)
    assert "CONVERSION_METADATA" in _metadata_names(ptq_int8)
    assert _metadata_names(stripped) == [n for n in _metadata_names(ptq_int8) if n not in REMOVED_METADATA]
    names = sum(len(n) for n in _inner_names(ptq_int8))
    assert len(stripped) <= len(ptq_int8) - names  # at least the names' bytes go
    x = digits.x_test
    np.testing.assert_array_equal(tflite_export.run(stripped, x), tflite_export.run(ptq_int8, x))
    before, after = tflite_export.delegation_report(ptq_int8), tflite_export.delegation_report(stripped)
    assert after == before and after["delegate_partitions"] == 1
    original, result = fb.read_model(ptq_int8), fb.read_model(stripped)
    assert [(s.signatureKey, [(e.name, e.tensorIndex) for e in s.inputs]) for s in result.signatureDefs] == \
        [(s.signatureKey, [(e.name, e.tensorIndex) for e in s.inputs]) for s in original.signatureDefs]
    for index in list(original.subgraphs[0].inputs) + list(original.subgraphs[0].outputs):
        assert result.subgraphs[0].tensors[index].name == original.subgraphs[0].tensors[index].name
    assert strip(stripped) == stripped  # nothing left to remove: the same bytes


def test_flags_choose_what_goes(ptq_int8):
    names_only = strip(ptq_int8, metadata=False)
    assert "CONVERSION_METADATA" in _metadata_names(names_only) and not _inner_names(names_only)
    metadata_only = strip(ptq_int8, names=False)
    assert "CONVERSION_METADATA" not in _metadata_names(metadata_only)
    assert _inner_names(metadata_only) == _inner_names(ptq_int8)
    assert strip(ptq_int8, names=False, metadata=False) == ptq_int8


def test_convert_strip_option_is_strip_of_the_converted_file(float_model, digits, ptq_int8):
    assert tflite_export.convert(float_model, digits.x_train, strip=True) == strip(ptq_int8)


def test_stripped_file_compresses_and_decompresses_to_the_same_outputs(codebook_int8, digits):
    stripped = strip(codebook_int8)
    small = tflite_export.compress(stripped)
    assert len(small) < len(tflite_export.compress(codebook_int8))
    x = digits.x_test[:64]
    np.testing.assert_array_equal(tflite_export.run(tflite_export.decompress(small), x),
                                  tflite_export.run(codebook_int8, x))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(content="model.tflite"), TypeError, "content"),
    (dict(content=b"not a flatbuffer at all"), ValueError, "content"),
    (dict(names=1), TypeError, "names=1"),
    (dict(metadata="yes"), TypeError, "metadata='yes'"),
], ids=["path-not-bytes", "not-tflite", "names-flag", "metadata-flag"])
def test_bad_arguments(ptq_int8, kwargs, error, match):
    args = dict(content=ptq_int8, **kwargs) if "content" not in kwargs else kwargs
    content = args.pop("content")
    with pytest.raises(error, match=match):
        strip(content, **args)


def test_compressed_and_loaded_files_are_refused(codebook_int8):
    small = tflite_export.compress(codebook_int8)
    with pytest.raises(ValueError, match="compressed file"):
        strip(small)
    loaded = tflite_export.decompress(small)  # the decoded weights sit past the flatbuffer (offset/size)
    assert any(b.offset for b in fb.read_model(loaded).buffers)
    with pytest.raises(ValueError, match="past the flatbuffer"):
        strip(loaded)


def test_a_metadata_entry_pointing_nowhere_is_refused(ptq_int8):
    model = fb.read_model(ptq_int8)
    model.metadata[0].buffer = len(model.buffers) + 7
    hostile = fb.write_model(model)
    with pytest.raises(ValueError, match="names buffer"):
        strip(hostile)
