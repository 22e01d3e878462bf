"""jaxsr weights -> the reference's model file (``export_reference``), and back."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from jaxsr import cli, errors
from jaxsr.model import E2EModel, flatten_params
from jaxsr.weights import (
    ReferenceExportError,
    convert_reference,
    export_reference,
    load_model,
    load_weights,
    to_reference_state_dict,
)
from jaxsr.weights.torch_zip import ALIGNMENT

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from batches import length_mask  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny", seed=5)


@pytest.fixture(scope="module")
def tiny_pt(tiny, tmp_path_factory):
    return export_reference(tiny, tmp_path_factory.mktemp("tiny") / "tiny.pt")


def _assert_same_weights(ours, theirs):
    assert ours.config == theirs.config
    a, b = flatten_params(ours.params), flatten_params(theirs.params)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def test_tiny_and_small_round_trip_through_the_converter(tiny, tiny_pt, tmp_path):
    _assert_same_weights(load_weights(convert_reference(tiny_pt, tmp_path / "tiny")), tiny)
    small = load_model("small", seed=2)  # 13.3M parameters: about 2 s each way
    out = export_reference(small, tmp_path / "small.pt")
    _assert_same_weights(load_weights(convert_reference(out, tmp_path / "small")), small)


def test_the_file_is_the_reference_layout(tiny_pt):
    options = json.loads(tiny_pt.with_suffix(".json").read_text())
    assert options["enc_emb_dim"] == 64 and options["n_dec_layers"] == 2
    assert options["enc_positional_embeddings"] is None and options["share_inout_emb"] is True
    assert (options["float_precision"], options["mantissa_len"]) == (3, 1)
    with zipfile.ZipFile(tiny_pt) as archive:
        names = archive.namelist()
        assert names[0] == "archive/data.pkl" and "archive/version" in names
        for info in archive.infolist():  # every storage starts on the alignment
            if info.filename.startswith("archive/data/"):
                start = info.header_offset + 30 + len(info.filename) + len(info.extra)
                assert start % ALIGNMENT == 0, info.filename
    again = export_reference(load_model("tiny", seed=5), tiny_pt.parent / "again.pt")
    assert again.read_bytes() == tiny_pt.read_bytes()  # deterministic


def test_the_default_model_loads_in_torch_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    default = load_model("default")
    out = export_reference("default", tmp_path / "default.pt")
    loaded = torch.load(out, weights_only=True)
    assert list(loaded) == ["embedder", "encoder", "decoder"]
    expected = to_reference_state_dict(default.params)
    got = {f"{module}.{key}": tensor for module, state in loaded.items()
           for key, tensor in state.items()}
    assert got.keys() == expected.keys()
    for key, tensor in got.items():
        assert tensor.dtype == torch.float32
        np.testing.assert_array_equal(tensor.numpy(), expected[key], err_msg=key)
    decoder = loaded["decoder"]  # tied: one storage, as in the reference's state dict
    assert decoder["proj.weight"].data_ptr() == decoder["embeddings.weight"].data_ptr()
    _assert_same_weights(load_weights(convert_reference(out, tmp_path / "back")), default)


def test_export_never_imports_torch(tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"  # any import of torch now fails
            "from jaxsr.weights import export_reference\n"
            f"export_reference('tiny', {str(tmp_path / 'out.pt')!r})\n"
            "print('exported')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "exported" in result.stdout, result.stderr[-2000:]
    assert (tmp_path / "out.pt").is_file() and (tmp_path / "out.json").is_file()


def _jaxsr_logits(weights, batch):
    model, variables = weights.model, {"params": weights.params}
    point_mask = length_mask(batch["point_lengths"], batch["point_ids"].shape[1])
    token_mask = length_mask(batch["token_lengths"], batch["tokens"].shape[1])
    encoded = model.apply(variables, batch["point_ids"], point_mask, method=E2EModel.encode)
    return np.asarray(model.apply(variables, batch["tokens"], encoded, point_mask, token_mask,
                                  method=E2EModel.decode))


def test_torch_reference_loaded_from_the_file_gives_jaxsr_logits(tiny, tiny_pt):
    torch = pytest.importorskip("torch")
    import torch_reference

    from jaxsr.expr.tokens import decoder_vocab, encoder_vocab

    options = json.loads(tiny_pt.with_suffix(".json").read_text())
    wrapper = torch_reference.build_wrapper(argparse.Namespace(**options), encoder_vocab(),
                                            decoder_vocab())
    for name, state in torch.load(tiny_pt, weights_only=True).items():
        getattr(wrapper, name).load_state_dict(state)  # strict: every key, every shape
    batch = dict(np.load(FIXTURES / "reference_tiny_outputs.npz"))
    theirs = torch_reference.reference_outputs(
        wrapper, batch["point_ids"], batch["point_lengths"], batch["tokens"],
        batch["token_lengths"])["logits"]
    ours = _jaxsr_logits(tiny, batch)
    mask = length_mask(batch["token_lengths"], batch["tokens"].shape[1])
    np.testing.assert_allclose(ours[mask], theirs[mask], atol=1e-5, rtol=0)
    assert np.abs(theirs).max() > 1


@pytest.mark.parametrize(("change", "message"), [
    ({"dtype": "bfloat16"}, "dtype='bfloat16'"),
    ({"ffn_multiplier": 2}, "ffn_multiplier=2"),
    ({"max_positions": 512}, "max_positions=512"),
    ({"max_input_dimension": 3}, "max_input_dimension=3"),
])
def test_settings_the_reference_lacks_are_named(tiny, tmp_path, change, message):
    weights = dataclasses.replace(tiny, config=tiny.config.replace(**change))
    with pytest.raises(ReferenceExportError, match=message):
        export_reference(weights, tmp_path / "out.pt")
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file


def test_another_vocabulary_is_refused(tiny, tmp_path):
    words = list(tiny.decoder_vocab)
    words[42] = "plus"
    with pytest.raises(ReferenceExportError, match="decoder vocabulary.*at id 42"):
        export_reference(dataclasses.replace(tiny, decoder_vocab=tuple(words)),
                         tmp_path / "out.pt")


def test_cli_exports_and_names_errors_on_one_line(tmp_path, capsys):
    weights = tmp_path / "weights"
    tiny = load_model("tiny")
    from jaxsr.weights import save_weights

    save_weights(weights, tiny.params, tiny.config.replace(dtype="bfloat16"))
    assert cli.main(["export-reference", str(weights), str(tmp_path / "bf16.pt")]) == errors.MODEL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dtype='bfloat16'" in err
    assert cli.main(["export-reference", "tiny", str(tmp_path / "tiny.pt")]) == 0
    assert "--reload_model" in capsys.readouterr().out
    assert (tmp_path / "tiny.json").is_file()
