"""activation_ranges / coverage: equal to a direct numpy computation on captured inputs; hooks removed; refusals."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as ss
import torch
from conftest import make_tiny

from mlquant.activations import ActivationTable, activation_ranges, flores_texts
from mlquant.errors import ConfigError
from mlquant.quantize.calibration import encode_texts

CAL = {"cal": ["The cat sat on the mat.", "A short calibration text, in English.", "Numbers 1 2 3 and words."]}
EVAL = {
    "greek": ["Καλημέρα σας, τι κάνετε σήμερα;", "Η γάτα κάθεται στο χαλί."],
    "arabic": ["مرحبا بكم في هذا الاختبار", "القطة تجلس على السجادة", "جملة ثالثة أطول قليلا من الأخريات"],
}


def _direct_inputs(model, texts: list[str]) -> dict[str, np.ndarray]:
    """Every Linear's input on every token but the first of each text, one text at a time (no padding)."""
    seen: dict[str, list[np.ndarray]] = {}
    handles = []
    for name, module in model.torch_model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            handles.append(module.register_forward_pre_hook(
                lambda m, args, name=name: seen.setdefault(name, []).append(args[0][0, 1:].double().numpy())))
    try:
        with torch.no_grad():
            for ids in encode_texts(model.tokenizer, texts, max_tokens=128):
                model.torch_model(input_ids=torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    return {name: np.concatenate(parts) for name, parts in seen.items()}


def _hook_count(model) -> int:
    return sum(len(m._forward_pre_hooks) for m in model.torch_model.modules())


@pytest.fixture(scope="module")
def tiny():
    return make_tiny("llama")


@pytest.fixture(scope="module")
def table(tiny) -> ActivationTable:
    return activation_ranges(tiny, languages=EVAL, calibration=CAL, k=3.0)


def test_statistics_equal_a_direct_numpy_computation(tiny, table: ActivationTable) -> None:
    frame = table.to_frame().set_index(["source", "linear"])
    assert len(frame) == 3 * 14  # 3 sources x 2 blocks x 7 Linears
    for source, texts in {**CAL, **EVAL}.items():
        direct = _direct_inputs(tiny, texts)
        for name, x in direct.items():
            row = frame.loc[(source, name)]
            a = np.abs(x)
            assert row["n_tokens"] == x.shape[0] and row["channels"] == x.shape[1]
            assert row["absmax"] == pytest.approx(a.max(), rel=1e-4)
            assert row["p99_9"] == pytest.approx(np.quantile(a, 0.999), rel=1e-4)
            rms = np.sqrt((x**2).mean(axis=1, keepdims=True))
            per_channel = (a > 3.0 * rms).sum(axis=0)
            assert row["outlier_share"] == pytest.approx(per_channel.sum() / a.size, abs=1e-6)
            kurt = ss.kurtosis(x, axis=0)
            assert row["kurtosis_max"] == pytest.approx(np.nanmax(kurt), rel=1e-3, abs=1e-6)
            assert row["kurtosis_median"] == pytest.approx(np.nanmedian(kurt), rel=1e-3, abs=1e-6)
            stats = table.stats[(source, name)]
            assert np.allclose(stats.absmax, a.max(axis=0), rtol=1e-4)
            assert np.array_equal(stats.outliers, per_channel)
            top = [int(c) for c in np.argsort(-per_channel, kind="stable")[:8] if per_channel[c] > 0]
            assert row["outlier_channels"] == ",".join(map(str, top))
    assert (frame["kind"].xs("cal", level="source") == "calibration").all()


def test_coverage_equals_a_direct_computation(tiny, table: ActivationTable) -> None:
    cal = _direct_inputs(tiny, CAL["cal"])
    for lang in EVAL:
        ev = _direct_inputs(tiny, EVAL[lang])
        cov = table.coverage("cal", lang).to_frame().set_index("linear")
        for name, x in ev.items():
            limit = np.abs(cal[name]).max(axis=0)
            over = np.abs(x) > limit
            # float32 capture vs float64 here: a value within rounding of the limit may flip; allow one token.
            assert abs(cov.loc[name, "tokens_exceeding"] * x.shape[0] - over.any(axis=1).sum()) <= 1
            assert cov.loc[name, "range_ratio"] == pytest.approx(np.abs(x).max() / limit.max(), rel=1e-4)
            assert abs(cov.loc[name, "channels_exceeding"] - (np.abs(x).max(axis=0) > limit).sum()) <= 1
    # Some Arabic/Greek byte tokens drive channels past anything the English calibration text did.
    assert table.coverage("cal", "arabic").to_frame()["tokens_exceeding"].max() > 0


def test_hooks_are_removed_after_a_run_and_after_an_error(tiny, monkeypatch) -> None:
    before = _hook_count(tiny)
    activation_ranges(tiny, languages={"x": ["hello there"]}, layers=[1])
    assert _hook_count(tiny) == before
    calls = {"n": 0}
    decoder = tiny.torch_model.get_decoder()

    def failing(*args, **kwargs):
        calls["n"] += 1
        assert _hook_count(tiny) > before  # the hooks are on during the forward pass
        raise RuntimeError("boom")

    monkeypatch.setattr(decoder, "forward", failing)
    with pytest.raises(RuntimeError, match="boom"):
        activation_ranges(tiny, languages={"x": ["hello there"]})
    monkeypatch.undo()
    assert calls["n"] == 1 and _hook_count(tiny) == before


def test_layers_filter_and_flores_languages(tiny) -> None:
    t = activation_ranges(tiny, languages=["en", "el"], calibration=["flores:en:4"], n_sentences=2, layers=[0])
    frame = t.to_frame()
    assert set(frame["layer"]) == {0} and set(frame["source"]) == {"en", "el", "flores:en:4"}
    assert len(flores_texts("el", 2)) == 2
    assert len(t.coverage("flores:en:4", "el")) == 7


def test_refusals_name_what_is_wrong(tiny, table: ActivationTable) -> None:
    with pytest.raises(ConfigError, match="'greek' is not a calibration source"):
        table.coverage("greek", "arabic")
    with pytest.raises(ConfigError, match="no statistics for 'hindi'"):
        table.coverage("cal", "hindi")
    with pytest.raises(ConfigError, match="layer 7 is not a decoder block index"):
        activation_ranges(tiny, languages={"x": ["hi"]}, layers=[7])
    with pytest.raises(ConfigError, match="no FLORES-200 devtest file for 'xx'"):
        activation_ranges(tiny, languages=["xx"])
    with pytest.raises(ConfigError, match="not one string"):
        activation_ranges(tiny, languages="en")
    with pytest.raises(ConfigError, match="k=0"):
        activation_ranges(tiny, languages=["en"], k=0)
    with pytest.raises(ConfigError, match="expected an HFModel"):
        activation_ranges(object(), languages=["en"])
