"""Integration: the real Gemma 3 270M and the real benchmark data, end to end."""

from __future__ import annotations

import pytest

import mlquant as mq


@pytest.mark.slow
def test_gemma_study_end_to_end(tmp_path) -> None:
    study = mq.Study(
        "gemma3-270m",
        quant=["fp32", "rtn-w4", "rtn-w4g128"],
        tasks=["xcopa", "belebele", "flores_ppl"],
        languages=["zh", "th"],
        limit=8,
    )
    df = study.run(tmp_path, progress=False).frame
    assert set(df.task) == {"xcopa", "belebele", "flores_ppl"}
    # xcopa: zh th; belebele: zh only (no Thai here); flores_ppl: both
    assert df[df.quant == "fp32"].groupby("task").lang.nunique().to_dict() == {"belebele": 1, "flores_ppl": 2, "xcopa": 2}
    ppl = mq.results.aggregate(df[df.task == "flores_ppl"], by=("quant",)).set_index("quant").score
    assert 0.5 < ppl["fp32"] < 2.5
    # 4-bit per-channel RTN on top of a Q4_K_M model costs bits per byte; groups of 128 cost less
    assert ppl["rtn-w4"] > ppl["rtn-w4g128"] > ppl["fp32"]
    rc = mq.stats.relative_change(df, baseline="fp32").to_frame()
    assert set(rc.quant) == {"rtn-w4", "rtn-w4g128"} and (rc.n == 8).all()
    assert study.run(tmp_path, progress=False) is not None and study.last_run.forward_passes == 0
