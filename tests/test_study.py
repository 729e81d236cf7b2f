"""Study runner: cells, Parquet files, the request cache, resume after a crash, zero work on a re-run."""

from __future__ import annotations

import textwrap

import pandas as pd
import pytest

import mlquant as mq
from mlquant.errors import ConfigError, UnknownNameError
from mlquant.models import FakeModel
from mlquant.results import COLUMNS, cell_path


def choice_by_length(ctx: str, cont: str) -> float:
    return -float(len(cont))


def test_study_writes_cells_and_reads_tidy_frame(tmp_path) -> None:
    model = FakeModel(loglikelihood=choice_by_length)
    study = mq.Study(model, quant=["fp32"], tasks=["xcopa"], languages=["tr", "zh"], limit=10, seed=1)
    df = study.run(tmp_path, progress=False).frame
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 20 and set(df.lang) == {"tr", "zh"}
    assert cell_path(tmp_path, "fp32", "xcopa", "tr").is_file()
    row = df.iloc[0]
    assert row.signature.startswith("mlquant:") and "|task:xcopa@" in row.signature and "|seed:1|" in row.signature
    # the prediction is the shorter option, by construction
    for _, r in df.iterrows():
        item = {i.id: i for i in mq.get_task("xcopa").items(r.lang)}[r.item_id]
        lens = [len(c) for c in mq.get_task("xcopa").choices(item, mq.get_language(r.lang))]
        assert int(r.extracted) == lens.index(min(lens))
    assert (tmp_path / "study.yaml").is_file()
    assert mq.read_results(tmp_path).equals(df)


def test_second_run_does_no_work(tmp_path) -> None:
    model = FakeModel(loglikelihood=choice_by_length)
    study = mq.Study(model, quant=["fp32"], tasks=["xcopa"], languages=["tr"], limit=5)
    study.run(tmp_path, progress=False)
    assert model.calls > 0
    calls = model.calls
    study.run(tmp_path, progress=False)
    assert model.calls == calls
    assert study.last_run.cells_skipped == 1 and study.last_run.requests_computed == 0


def test_second_run_of_real_study_does_zero_forward_passes(tmp_path, tiny_llama_dir) -> None:
    study = mq.Study(str(tiny_llama_dir), quant=["fp32", "rtn-w8"], tasks=["xcopa", "flores_ppl"], languages=["tr"], limit=4)
    first = study.run(tmp_path, progress=False).frame
    assert study.last_run.forward_passes > 0 and study.last_run.cells_computed == 4
    second = study.run(tmp_path, progress=False).frame
    assert study.last_run.forward_passes == 0
    assert study.last_run.models_loaded == 0 and study.last_run.cells_skipped == 4
    pd.testing.assert_frame_equal(first, second)
    # the cache alone is enough too: delete the cells and re-run
    import shutil

    shutil.rmtree(tmp_path / "cells")
    third = study.run(tmp_path, progress=False).frame
    assert study.last_run.forward_passes == 0 and study.last_run.cache_hits > 0
    pd.testing.assert_frame_equal(first, third)


def test_killed_run_resumes_where_it_stopped(tmp_path) -> None:
    class Crashing(FakeModel):
        def __init__(self, crash_after: int) -> None:
            super().__init__(loglikelihood=choice_by_length)
            self.crash_after = crash_after

        def loglikelihood(self, requests):
            if self.calls >= self.crash_after:
                raise RuntimeError("killed")
            return super().loglikelihood(requests)

    crashing = Crashing(crash_after=3)
    study = mq.Study(crashing, quant=["fp32"], tasks=["xcopa"], languages=["tr", "zh"], limit=40)
    with pytest.raises(RuntimeError, match="killed"):
        study.run(tmp_path, progress=False, chunk_items=10)
    # three chunks of 10 items were answered and cached (cell tr finished after 4 chunks would have been needed)
    done = crashing.requests_seen
    assert done == 3 * 10 * 2
    fresh = FakeModel(loglikelihood=choice_by_length)
    study2 = mq.Study(fresh, quant=["fp32"], tasks=["xcopa"], languages=["tr", "zh"], limit=40)
    df = study2.run(tmp_path, progress=False, chunk_items=10).frame
    assert fresh.requests_seen == 80 * 2 - done  # only what was not cached
    assert len(df) == 80


def test_quantized_cells_pair_with_baseline_items(tmp_path, tiny_llama_dir) -> None:
    study = mq.Study(str(tiny_llama_dir), quant=["fp32", "rtn-w4g32"], tasks=["xcopa"], languages=["zh"], limit=6)
    df = study.run(tmp_path, progress=False).frame
    ids = df.groupby("quant").item_id.apply(lambda s: sorted(s))
    assert ids["fp32"] == ids["rtn-w4g32"]
    rc = mq.stats.relative_change(df, baseline="fp32").to_frame()
    base = df[df.quant == "fp32"].score.mean()
    q = df[df.quant == "rtn-w4g32"].score.mean()
    row = rc[(rc.quant == "rtn-w4g32") & (rc.lang == "zh")].iloc[0]
    if base:
        assert row.rel_change == pytest.approx(100 * (q - base) / base)


def test_validation_happens_before_any_model_is_loaded(tmp_path) -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'xcopa'"):
        mq.Study("does/not-exist", quant=["fp32"], tasks=["xcopo"])
    with pytest.raises(ConfigError, match="w_bits=0"):
        mq.Study("does/not-exist", quant=["fp32", "rtn-w0"], tasks=["xcopa"])
    with pytest.raises(ConfigError, match="has no baseline"):
        mq.Study("does/not-exist", quant=["rtn-w8"], tasks=["xcopa"])
    with pytest.raises(ConfigError, match="task 'xcopa' has no data for language 'ja'; it has: "):
        mq.Study("does/not-exist", quant=["fp32"], tasks=[{"name": "xcopa", "languages": ["ja"]}])
    with pytest.raises(ConfigError, match="quant 'rtn-w8' is listed twice"):
        mq.Study("does/not-exist", quant=["fp32", "rtn-w8", "rtn-w8"], tasks=["xcopa"])


def test_study_yaml_errors_name_file_line_and_key(tmp_path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent("""\
        model: gemma3-270m
        quant: [fp32, rtn-w4]
        taks: [xcopa]
        """))
    with pytest.raises(ConfigError, match=r"study.yaml, line 3: unknown key 'taks'. Did you mean 'tasks'"):
        mq.Study.from_yaml(path)
    path.write_text("model: gemma3-270m\nquant: [fp32, rtn-w0]\ntasks: [xcopa]\n")
    with pytest.raises(ConfigError, match=r"study.yaml, line 2: .*w_bits=0"):
        mq.Study.from_yaml(path)


def test_calibration_list_is_an_axis() -> None:
    study = mq.Study(
        "does/not-exist",
        quant=["fp32", {"label": "rtn-w8"}],
        tasks=["xcopa"],
        languages=["tr"],
    )
    assert [s.label for s in study.specs] == ["fp32", "rtn-w8"]


def test_task_limit_overrides_study_limit(tmp_path) -> None:
    model = FakeModel(loglikelihood=choice_by_length)
    study = mq.Study(model, quant=["fp32"], tasks=[{"name": "xcopa", "limit": 3}, "flores_ppl"], languages=["tr"], limit=5)
    df = study.run(tmp_path, progress=False).frame
    assert df.groupby("task").size().to_dict() == {"flores_ppl": 5, "xcopa": 3}


def test_one_task_twice_needs_labels_and_keeps_both(tmp_path) -> None:
    model = FakeModel(generate=lambda ctx: "Bonjour.")
    entries = [{"name": "flores", "direction": "en-xx", "limit": 2}, {"name": "flores", "direction": "xx-en", "limit": 3}]
    with pytest.raises(ConfigError, match=r"tasks\[1\]: task 'flores' is already tasks\[0\]; give each entry its own 'label'"):
        mq.Study(model, quant=["fp32"], tasks=entries, languages=["fr"])
    with pytest.raises(ConfigError, match=r"tasks\[0\]: label='a b'"):
        mq.Study(model, quant=["fp32"], tasks=[{"name": "xcopa", "label": "a b"}], languages=["tr"])
    entries[1]["label"] = "flores-xx-en"
    study = mq.Study(model, quant=["fp32"], tasks=entries, languages=["fr"])
    df = study.run(tmp_path, progress=False).frame
    assert df.groupby("task").size().to_dict() == {"flores": 2, "flores-xx-en": 3}
    assert cell_path(tmp_path, "fp32", "flores-xx-en", "fr").is_file()
    assert set(df[df.task == "flores-xx-en"].extra.map(lambda e: __import__("json").loads(e)["direction"])) == {"xx-en"}
    resolved = [t.get("label") for t in study.to_dict()["tasks"]]
    assert resolved == [None, "flores-xx-en"]
    again = mq.Study(model, quant=["fp32"], tasks=entries, languages=["fr"])
    again.run(tmp_path, progress=False)
    assert again.last_run.cells_skipped == 2 and again.last_run.cells_computed == 0


def test_flores_ppl_weights_by_bytes(tmp_path) -> None:
    model = FakeModel(rolling=lambda text: -2.0 * len(text.encode()))  # 2 nats per byte
    df = mq.Study(model, quant=["fp32"], tasks=["flores_ppl"], languages=["ja"], limit=3).run(tmp_path, progress=False).frame
    import math

    assert df.score.tolist() == pytest.approx([2 / math.log(2)] * 3)
    assert (df.weight > 0).all() and not df.higher_is_better.any()


def test_group_size_checked_against_config_before_loading(tmp_path, tiny_llama_dir, monkeypatch) -> None:
    import mlquant.models as models

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_pretrained", no_loading)
    study = mq.Study(str(tiny_llama_dir), quant=["fp32", "rtn-w4g48"], tasks=["xcopa"], languages=["tr"], limit=2)
    with pytest.raises(ConfigError, match="group_size=48 does not divide hidden_size=64"):
        study.run(tmp_path, progress=False)


def test_quantization_report_is_stored_and_readable(tmp_path, tiny_llama_dir) -> None:
    study = mq.Study(str(tiny_llama_dir), quant=["fp32", "rtn-w4g32"], tasks=["xcopa"], languages=["tr"], limit=2)
    study.run(tmp_path, progress=False)
    report = mq.read_results(tmp_path, what="quantization")
    assert set(report.quant) == {"rtn-w4g32"}
    assert {"layer", "weight_rel_err", "output_rel_err", "bits_per_weight"} <= set(report.columns)
    assert (report.weight_rel_err > 0).all() and len(report) == 2 * 7  # 2 blocks x 7 Linears


def test_results_object_reads_a_run_and_pairs_once(tmp_path, monkeypatch) -> None:
    model = FakeModel(loglikelihood=choice_by_length)
    mq.Study(model, quant=["fp32"], tasks=["xcopa"], languages=["tr", "zh"], limit=4).run(tmp_path, progress=False)
    res = mq.Results.read(tmp_path)
    frame = mq.read_results(tmp_path)
    pd.testing.assert_frame_equal(res.frame, frame)
    assert res.quants == ["fp32"] and len(res) == 8 and "8 rows, 2 cells" in repr(res)
    assert res.quantization().empty and res.judged().empty
    # A second "quant" made from the baseline rows, with one answer flipped.
    other = frame.assign(quant="w4")
    other.loc[0, "score"] = 1.0 - other.loc[0, "score"]
    res = mq.Results(pd.concat([frame, other], ignore_index=True))
    import mlquant.stats

    real_pair, calls = mlquant.stats.pair, []
    monkeypatch.setattr(mlquant.stats, "pair", lambda *a, **k: calls.append(a[1:]) or real_pair(*a, **k))
    first = mq.stats.relative_change(res, baseline="fp32").to_frame()
    assert mq.stats.mcnemar(res, baseline="fp32").to_frame()["n"].sum() == 8
    assert res.paired("fp32") is res.paired("fp32")
    assert calls == [("fp32",)]  # paired once for three uses
    pd.testing.assert_frame_equal(first, mq.stats.relative_change(res.frame, baseline="fp32").to_frame())
    from mlquant.report import relative_change_table

    assert relative_change_table(res, "fp32").shape == (2, 1)


def test_resolved_study_yaml_loads_back_to_the_same_cells(tmp_path) -> None:
    study = mq.Study(
        "gemma3-270m",
        quant=["fp32", "rtn-w4g128", {"label": "rtn-w4g128", "symmetric": False}, "bnb-nf4", "w8a8",
               {"label": "gptq-w4g128", "calibration": ["flores:ja:16", "flores:mixed:16"], "damp": 0.05}],
        tasks=[{"name": "confusion", "subsets": ["monolingual/aya"], "languages": ["zh"], "limit": 2},
               {"name": "flores", "direction": "xx-en", "label": "fx", "languages": ["ja"]}, "xcopa"],
        languages=["ja", "zh"],
        limit=3,
    )
    path = tmp_path / "study.yaml"
    path.write_text(__import__("yaml").safe_dump(study.to_dict(), sort_keys=False, allow_unicode=True))
    again = mq.Study.from_yaml(path)
    assert [s.fingerprint() for s in again.specs] == [s.fingerprint() for s in study.specs]
    assert [s.label for s in again.specs] == [s.label for s in study.specs]
    assert [again.signature(c, "m") for c in again.cells] == [study.signature(c, "m") for c in study.cells]
    # A resolved spec whose label disagrees with its fields is refused, naming both.
    text = path.read_text().replace("label: rtn-w4g128-asym", "label: rtn-w8", 1)
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"label 'rtn-w8' does not match its fields, which give 'rtn-w4g128-asym'"):
        mq.Study.from_yaml(path)
