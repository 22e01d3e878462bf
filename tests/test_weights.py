"""jaxsr's weights format and the converter for the reference's model1.pt."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxsr import cli
from jaxsr.data import GeneratorConfig
from jaxsr.model import E2EModel, flatten_params, get_config, init_params, param_counts
from jaxsr.weights import (
    CheckpointError,
    CheckpointMismatchError,
    Opaque,
    ParamsMismatchError,
    VocabularyMismatchError,
    WeightsChecksumError,
    WeightsFormatError,
    check_vocabularies,
    convert_reference,
    load_model,
    load_weights,
    map_reference_state_dict,
    read_reference_checkpoint,
    save_weights,
    to_reference_state_dict,
    unpickle_checkpoint,
)
from jaxsr.weights.convert import config_from_reference

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CHECKPOINT = FIXTURES / "reference_tiny.pt"
sys.path.insert(0, str(FIXTURES))
from batches import length_mask  # noqa: E402


@pytest.fixture(scope="module")
def reference():
    return read_reference_checkpoint(CHECKPOINT)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return load_weights(convert_reference(CHECKPOINT, tmp_path_factory.mktemp("converted")))


def _outputs(weights, point_ids, point_lengths, tokens, token_lengths):
    model, variables = weights.model, {"params": weights.params}
    point_mask = length_mask(point_lengths, point_ids.shape[1])
    token_mask = length_mask(token_lengths, tokens.shape[1])

    @jax.jit
    def run(variables):
        embedded = model.apply(variables, point_ids, method=E2EModel.embed)
        encoded = model.apply(variables, point_ids, point_mask, method=E2EModel.encode)
        logits = model.apply(variables, tokens, encoded, point_mask, token_mask,
                             method=E2EModel.decode)
        return {"embedder": embedded, "encoder": encoded, "logits": logits}

    return {k: np.asarray(v) for k, v in run(variables).items()}


# ----------------------------------------------------------------------------- conversion


def test_reference_checkpoint_converts_and_reproduces_torch_outputs(converted):
    expected = np.load(FIXTURES / "reference_tiny_outputs.npz")
    ours = _outputs(converted, expected["point_ids"], expected["point_lengths"],
                    expected["tokens"], expected["token_lengths"])
    for name in ("embedder", "encoder", "logits"):
        np.testing.assert_allclose(ours[name], expected[name], atol=1e-4, rtol=0, err_msg=name)
    assert np.abs(expected["logits"]).max() > 1


def test_conversion_reads_config_flags_vocabularies_and_decoding(converted):
    c = converted.config
    assert (c.embedder_dim, c.encoder_dim, c.decoder_layers, c.decoder_heads) == (4, 12, 2, 2)
    assert (c.max_positions, c.encoder_pad_id, c.decoder_pad_id) == (4096, 8, 82)
    assert converted.decoding == {
        "beam_type": "sampling", "beam_size": 10, "beam_temperature": 0.1,
        "beam_length_penalty": 1, "beam_early_stopping": True, "max_generated_output_len": 200}
    source = converted.metadata["source"]
    assert source["class"] == "symbolicregression.model.model_wrapper.ModelWrapper"
    assert source["vocabulary_checked"] and len(source["sha256"]) == 64
    assert converted.metadata["training_params"]["lr"] == 2e-4
    assert converted.decoder_vocab[74] == "<EOS>" and len(converted.encoder_vocab) == 10218


def test_conversion_imports_neither_torch_nor_the_reference(tmp_path):
    code = ("import sys; from jaxsr.weights import convert_reference; "
            f"convert_reference({str(CHECKPOINT)!r}, {str(tmp_path / 'w')!r}); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'symbolicregression')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, timeout=300).stdout
    assert out.strip() == "[]"


def test_state_dict_round_trips_through_the_mapping(reference):
    config = config_from_reference(reference)
    params = map_reference_state_dict(reference.state_dict, config)
    back = to_reference_state_dict(params)
    assert back.keys() == reference.state_dict.keys()
    for key, value in reference.state_dict.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)
    assert flatten_params(params)["decoder/attentions_1/q_lin/kernel"].shape == (12, 12)


def test_mapping_names_unknown_missing_and_misshapen_keys(reference):
    config = config_from_reference(reference)
    state = dict(reference.state_dict)
    state["decoder.foo.weight"] = np.zeros(3, np.float32)
    del state["encoder.layer_norm2.1.bias"]
    state["embedder.fc.weight"] = state["embedder.fc.weight"].T
    with pytest.raises(CheckpointMismatchError) as err:
        map_reference_state_dict(state, config)
    message = str(err.value)
    assert "unknown key decoder.foo.weight" in message
    assert "missing key encoder.layer_norm2.1.bias" in message
    assert "shape of embedder.fc.weight: (132, 12), expected (12, 132)" in message


def test_untied_output_projection_is_refused(reference):
    state = dict(reference.state_dict)
    state["decoder.proj.weight"] = state["decoder.embeddings.weight"] + 1
    with pytest.raises(CheckpointMismatchError, match="share_inout_emb"):
        map_reference_state_dict(state, config_from_reference(reference))


def test_vocabulary_differences_are_named_by_id(reference):
    words = dict(reference.equation_id2word)
    words[42] = "plus"
    with pytest.raises(VocabularyMismatchError, match=r"42: 'plus' vs 'add'"):
        check_vocabularies(dataclasses.replace(reference, equation_id2word=words))


def test_unsupported_reference_flags_are_refused(reference):
    flags = {**reference.params, "norm_attention": True}
    with pytest.raises(CheckpointError, match="norm_attention=True"):
        config_from_reference(dataclasses.replace(reference, params=flags))


def test_cli_convert_writes_loadable_weights(tmp_path, capsys):
    assert cli.main(["convert", str(CHECKPOINT), str(tmp_path / "w")]) == 0
    assert "vocabularies equal jaxsr's" in capsys.readouterr().out
    assert load_model(str(tmp_path / "w")).config.decoder_dim == 12  # loads by path
    assert cli.main(["convert", str(FIXTURES / "batches.py"), str(tmp_path / "x")]) == 4
    assert "not a PyTorch zip checkpoint" in capsys.readouterr().err


# ----------------------------------------------------------------------------- safety


def _torch_like_zip(path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        for key, raw in (storages or {}).items():
            z.writestr(f"archive/data/{key}", raw)
    return path


class _SystemCall:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _payloads(marker: Path) -> dict[str, bytes]:
    command = f"touch {marker}"
    import_chain = (  # getattr(__import__("os"), "system")(command), in protocol 0
        b"c__builtin__\ngetattr\n(c__builtin__\n__import__\n(S'os'\ntRS'system'\ntR(S'"
        + command.encode() + b"'\ntR.")
    return {
        "reduce": pickle.dumps(_SystemCall(command), protocol=2),
        "nested": pickle.dumps({"embedder": _SystemCall(command), "encoder": {}, "decoder": {},
                                "params": {}}, protocol=2),
        "import_chain": import_chain,
        "exec": b"c__builtin__\nexec\n(S'open(\"" + str(marker).encode() + b"\", \"w\")'\ntR.",
    }


@pytest.mark.parametrize("name", ["reduce", "nested", "import_chain", "exec"])
def test_malicious_pickles_are_never_executed(tmp_path, name):
    marker = tmp_path / "pwned"
    path = _torch_like_zip(tmp_path / "evil.pt", _payloads(marker)[name])
    with pytest.raises(CheckpointError):
        convert_reference(path, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_untrusted_objects_become_inert_placeholders(tmp_path):
    marker = tmp_path / "pwned"
    root = unpickle_checkpoint(_torch_like_zip(tmp_path / "evil.pt", _payloads(marker)["reduce"]))
    assert isinstance(root, Opaque) and root.class_path() in ("posix.system", "os.system")
    assert root._args == (f"touch {marker}",) and not marker.exists()


def _rebuild_tensor_pickle(size: tuple[int, ...], stride: tuple[int, ...], numel: int) -> bytes:
    """A hand-assembled protocol-2 pickle of one tensor, as torch.save writes it."""
    def text(s: str) -> bytes:
        return b"X" + struct.pack("<I", len(s)) + s.encode()

    def ints(values) -> bytes:
        return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"

    storage = (b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text("0") + text("cpu")
               + b"J" + struct.pack("<i", numel) + b"tQ")
    return (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"J\x00\x00\x00\x00"
            + ints(size) + ints(stride) + b"\x89}t" + b"R.")


def test_tensors_are_rebuilt_from_raw_storage_with_strides(tmp_path):
    raw = np.arange(6, dtype=np.float32).tobytes()
    good = _torch_like_zip(tmp_path / "t.pt", _rebuild_tensor_pickle((3, 2), (1, 3), 6),
                           {"0": raw})
    np.testing.assert_array_equal(unpickle_checkpoint(good), np.arange(6.0).reshape(2, 3).T)
    bad = _torch_like_zip(tmp_path / "b.pt", _rebuild_tensor_pickle((100,), (1,), 6), {"0": raw})
    with pytest.raises(CheckpointError, match="reads past its storage"):
        unpickle_checkpoint(bad)


def test_unreadable_files_get_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        convert_reference(tmp_path / "model1.pt", tmp_path / "out")
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02not a zip")
    with pytest.raises(CheckpointError, match="not a PyTorch zip checkpoint"):
        convert_reference(tmp_path / "junk.pt", tmp_path / "out")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointError, match="data.pkl"):
        convert_reference(tmp_path / "other.zip", tmp_path / "out")
    truncated = _torch_like_zip(tmp_path / "trunc.pt", pickle.dumps({"a": 1})[:-3])
    with pytest.raises(CheckpointError, match="cannot unpickle"):
        convert_reference(truncated, tmp_path / "out")


# ----------------------------------------------------------------------------- format


@pytest.fixture(scope="module")
def tiny_params():
    return init_params(get_config("tiny"), seed=3)


def test_save_load_round_trip(tmp_path, tiny_params):
    config = get_config("tiny")
    decoding = {"beam_type": "search", "beam_size": 4}
    out = save_weights(tmp_path / "w", tiny_params, config, decoding=decoding,
                       metadata={"note": "test"})
    loaded = load_weights(out / "model.json")  # the directory or its JSON both work
    assert loaded.config == config and loaded.decoding == decoding
    assert loaded.metadata == {"note": "test"} and loaded.decoder_vocab[82] == "<PAD>"
    saved = flatten_params(tiny_params)
    assert flatten_params(loaded.params).keys() == saved.keys()
    for key, value in flatten_params(loaded.params).items():
        np.testing.assert_array_equal(value, np.asarray(saved[key]), err_msg=key)
    meta = json.loads((out / "model.json").read_text())
    assert meta["n_parameters"] == param_counts(config)["total"] == 1_641_508
    assert meta["arrays"]["decoder/proj/bias"] == [10292]


def test_corrupted_arrays_fail_the_checksum(tmp_path, tiny_params):
    out = save_weights(tmp_path / "w", tiny_params, get_config("tiny"))
    data = bytearray((out / "params.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "params.npz").write_bytes(bytes(data))
    with pytest.raises(WeightsChecksumError, match="sha256"):
        load_weights(out)


def test_bad_weights_directories_are_named(tmp_path, tiny_params):
    config = get_config("tiny")
    with pytest.raises(WeightsFormatError, match="no jaxsr weights"):
        load_weights(tmp_path / "nothing")
    with pytest.raises(WeightsFormatError, match="neither a model config name"):
        load_model("nothing-here")
    out = save_weights(tmp_path / "w", tiny_params, config)
    (out / "model.json").write_text("{not json")
    with pytest.raises(WeightsFormatError, match="not valid JSON"):
        load_weights(out)
    wrong = {**tiny_params, "encoder": {**tiny_params["encoder"], "extra": {"bias": np.zeros(2)}}}
    with pytest.raises(ParamsMismatchError, match="unexpected: encoder/extra/bias"):
        save_weights(tmp_path / "v", wrong, config)
    save_weights(tmp_path / "v", tiny_params, config)
    meta = json.loads((tmp_path / "v" / "model.json").read_text())
    meta["config"]["decoder_layers"] = 3  # arrays no longer fit the config
    (tmp_path / "v" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ParamsMismatchError, match="missing: decoder/attentions_2/q_lin/kernel"):
        load_weights(tmp_path / "v")


def test_load_model_by_config_name_gives_random_weights():
    weights = load_model("tiny", seed=1)
    assert weights.config == get_config("tiny") and weights.metadata["random_init"]["seed"] == 1


# ----------------------------------------------------------------------------- with torch


def test_fixture_script_reproduces_the_committed_fixture(tmp_path, converted):
    pytest.importorskip("torch")
    import make_reference_checkpoint

    make_reference_checkpoint.main(tmp_path)
    fresh = np.load(tmp_path / make_reference_checkpoint.OUTPUTS)
    committed = np.load(FIXTURES / make_reference_checkpoint.OUTPUTS)
    # The outputs are float32 forward passes of torch: another build or thread count sums in
    # another order (differences up to 2e-6 seen); the weights themselves must match exactly.
    for name in committed.files:
        np.testing.assert_allclose(fresh[name], committed[name], atol=1e-5, err_msg=name)
    regenerated = load_weights(convert_reference(tmp_path / make_reference_checkpoint.CHECKPOINT,
                                                 tmp_path / "w"))
    ours = flatten_params(regenerated.params)
    for key, value in flatten_params(converted.params).items():
        np.testing.assert_array_equal(ours[key], value, err_msg=key)


def test_training_checkpoint_dict_with_ddp_prefixes_converts(tmp_path, converted, reference):
    torch = pytest.importorskip("torch")
    import argparse

    modules = {"embedder": {}, "encoder": {}, "decoder": {}}
    for key, value in reference.state_dict.items():
        head, rest = key.split(".", 1)
        modules[head][f"module.{rest}"] = torch.from_numpy(value.copy())
    torch.save({**modules, "params": argparse.Namespace(**reference.params), "epoch": 3},
               tmp_path / "checkpoint.pth")
    weights = load_weights(convert_reference(tmp_path / "checkpoint.pth", tmp_path / "w"))
    assert not weights.metadata["source"]["vocabulary_checked"]
    ours = flatten_params(weights.params)
    for key, value in flatten_params(converted.params).items():
        np.testing.assert_array_equal(ours[key], value, err_msg=key)


def test_the_shipped_default_model_loads_by_name_with_its_checksum():
    import warnings

    from jaxsr.model import count_params
    from jaxsr.weights import UntrainedModelWarning, default_model_path

    assert default_model_path() is not None, "jaxsr/weights/default is missing"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedModelWarning)
        weights = load_model("default")  # verifies the recorded sha256
    assert weights.metadata["source"]["kind"] == "jaxsr train"
    assert weights.metadata["source"]["step"] > 0
    assert count_params(weights.params) == 1_641_508
    # Its recorded bag size (what the regressor feeds it) is within what it was trained on.
    recorded = weights.metadata["source"]["train_config"]["generator"]
    trained_on = GeneratorConfig.from_dict(recorded).max_points  # recorded as "max_len"
    assert 1 <= weights.decoding["max_input_points"] <= trained_on
