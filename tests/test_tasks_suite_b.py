"""Tests of suite B: language confusion, pairwise judge, similarity to the baseline, MGSM modes and digits.

Fast tests use scripted detectors, judges and embedders, a tiny random Llama and hand-computed values; tests that
load lingua's models, the sentence-embedding model or Gemma 3 270M are marked ``slow``.
"""

from __future__ import annotations

import copy
import http.server
import json
import math
import os
import threading
import unicodedata
from pathlib import Path

import pandas as pd
import pytest

import mlquant as mq
from mlquant.errors import ConfigError, DataError
from mlquant.languages import get_language
from mlquant.models import FakeModel
from mlquant.requests import GenerateRequest
from mlquant.tasks import get_task
from mlquant.tasks._scoring import MultilingualTokenizer, extract_number, multilingual_tokens
from mlquant.tasks.confusion import (
    SUBSETS,
    LanguageConfusion,
    LinguaDetector,
    check_completion,
    confusion_scores,
    english_words,
    lcb_normalize,
    lcb_tokenize,
)
from mlquant.tasks.judge import OpenAIChatModel, OpenEnded, judge_pairs, judge_results, parse_verdict, win_rates
from mlquant.tasks.mgsm import MGSM

FIXTURES = Path(__file__).parent / "fixtures"
DATA = Path(os.environ.get("MLQUANT_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_data = pytest.mark.skipif(
    not (DATA / "language_confusion" / "english_words.txt").is_file(), reason="needs the shared data (MLQUANT_DATA_DIR)"
)


@pytest.fixture()
def data_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    if not (DATA / "language_confusion").is_dir():
        pytest.skip("needs the shared data (MLQUANT_DATA_DIR)")
    monkeypatch.setenv("MLQUANT_DATA_DIR", str(DATA))
    return DATA


# ======================================================================================================================
# Language confusion
# ======================================================================================================================

#: Real completions of Command R+ from the benchmark repository (for-ai/language-confusion @ 0cfdbb4a,
#: outputs/command-r-plus.csv, Apache-2.0): (csv id, task, source, language, completion).
LCB_OUTPUTS = {
    # English first line ("Here are four articles ... written in Japanese:"), then Japanese: fails line-level.
    "ja_switch": ("7", "crosslingual", "okapi", "ja",
                  "Here are four articles on the topic of cryptocurrency, written in Japanese:\n\n## Article 1: "
                  "暗号通貨とは？その仕組みと特徴\n\n暗号通貨は、デジタル形式で存在し、暗号化技術を用いて安全な取引と所有権の管理を"
                  "可能にする通貨です。従来の中央銀行が発行する通貨とは異なり、暗号通貨は分散型の仕組みに基づいており、政府や金融機関"
                  "による管理や介入を受けることなく、ユーザー同士"),
    # Japanese throughout, with the English word "based" inside: passes line-level, fails word-level.
    "ja_word": ("16", "crosslingual", "okapi", "ja",
                "申し訳ありませんが、提供された記事「ブレグジットがイギリスに与えた影響」の内容が不明なため、要約を執筆することができ"
                "ません。要約を執筆するには、その記事へのアクセスが必要です。他の関連記事や要約 based での情報がごありましたら、それに"
                "関するレポートを喜んで提供いたします。"),
    # Korean with "(Gini index)": whitespace tokens are "계수Gini" and "index는" after punctuation removal, so the
    # benchmark finds no English word: passes both levels.
    "ko_pass": ("3", "crosslingual", "okapi", "ko",
                "지니 계수(Gini index)는 소득 불평등 또는 소득 분배의 불평등 정도를 측정하는 지표입니다. 이 지수는 이탈리아 통계학자 "
                "코라도 지니(Corrado Gini)의 이름에서 유래되었습니다. 지니 계수는 0에서 1 사이의 값을 가지며, 값이 0에 가까울수록 "
                "소득 분배가 평등하고, 1에 가까울수록 불평등함을 의미합니다."),
    # Chinese with capitalised names only (YC, Airbnb, ...): no lower-case English word; passes both levels.
    "zh_pass": ("63", "monolingual", "aya_human_annotated", "zh",
                "YC 代表 Y Combinator，这是一家位于美国的知名创业加速器。 Y Combinator 的使命是为初创公司提供早期资金、建议和连接，"
                "帮助它们成功发展。\n\n自 2005 年成立以来，YC 已经为数千家初创公司提供了支持，其中许多公司已经取得了巨大的成功。 YC "
                "投资组合包括诸如 Airbnb、Dropbox、Stripe、Reddit 和 Coinbase 等知名公司的名字。\n\nYC 计划通常持续"),
}

#: Hand-written completions (not from the benchmark).
HAND_OUTPUTS = {
    # German, then switching to English mid-way: must fail line-level.
    "de_switch": ("de", "Berlin ist die Hauptstadt von Deutschland und eine sehr große Stadt.\n"
                        "Sie hat viele Museen, Parks und eine lange Geschichte.\n"
                        "However, the rest of this answer is written in English instead."),
    "fr_pass": ("fr", "Paris est la capitale de la France et une très grande ville.\nElle compte de nombreux musées."),
    "ru_word": ("ru", "Это ответ на русском языке, но в нём есть слово computer посередине."),
    "ar_pass": ("ar", "القاهرة هي عاصمة مصر وأكبر مدينة في العالم العربي."),
    "short": ("ja", "はい。\nそうです。"),  # no line with 5 tokens: skipped
}


def script_detector(text: str) -> str | None:
    """A deterministic stand-in for a LID model: decides by the script of the letters (tests only)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return None
    names = [unicodedata.name(c, "") for c in letters]

    def share(prefix: tuple[str, ...]) -> float:
        return sum(n.startswith(prefix) for n in names) / len(names)

    if share(("HIRAGANA", "KATAKANA")) > 0.05:
        return "ja"
    if share(("CJK",)) > 0.5:
        return "zh" if share(("HIRAGANA", "KATAKANA")) == 0 else "ja"
    if share(("HANGUL",)) > 0.5:
        return "ko"
    if share(("CYRILLIC",)) > 0.5:
        return "ru"
    if share(("ARABIC",)) > 0.5:
        return "ar"
    if share(("LATIN",)) > 0.5:
        lowered = text.lower()
        if any(w in lowered.split() for w in ("ist", "und", "die", "von", "sie", "hat", "eine")):
            return "de"
        if any(w in lowered.split() for w in ("est", "la", "de", "et", "une", "elle")):
            return "fr"
        return "en"
    return None


@pytest.fixture(scope="module")
def words() -> frozenset[str]:
    path = DATA / "language_confusion" / "english_words.txt"
    if not path.is_file():
        pytest.skip("needs english_words.txt from the shared data")
    return english_words(DATA)


def test_lcb_normalize_and_tokenize() -> None:
    assert lcb_normalize("  Hello, world! — yes،\nQ: next question") == "Hello world   yes"  # "!" dropped, "—" -> " "
    assert lcb_tokenize("a b  c", "de") == ["a", "b", "c"]


def test_lcb_tokenize_segmenters() -> None:
    pytest.importorskip("jieba")
    pytest.importorskip("fugashi")
    pytest.importorskip("unidic_lite")
    assert lcb_tokenize("東京は日本の首都です", "ja") == ["東京", "は", "日本", "の", "首都", "です"]
    assert lcb_tokenize("我喜欢北京天安门", "zh") == ["我", "喜欢", "北京", "天安门"]


def test_lcb_tokenize_fallback_without_segmenters(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlquant.tasks import confusion

    def missing() -> None:
        raise ImportError("no segmenter")

    monkeypatch.setattr(confusion, "_jieba", missing)
    monkeypatch.setattr(confusion, "_mecab", missing)
    assert lcb_tokenize("我喜欢 Python 3", "zh") == ["我", "喜", "欢", "Python", "3"]
    assert lcb_tokenize("要約 based です", "ja") == ["要", "約", "based", "で", "す"]


def test_english_word_list_filtered_as_benchmark(words: frozenset[str]) -> None:
    # compute_metrics.py keeps lower-case words longer than 3 characters.
    assert "based" in words and "computer" in words and "index" in words
    assert "the" not in words and "Gini" not in words and "A's" not in words


@pytest.mark.parametrize(
    ("key", "skipped", "line_pass", "word_pass", "found"),
    [
        ("ja_switch", False, False, None, ()),
        ("ja_word", False, True, False, ("based",)),
        ("ko_pass", False, True, True, ()),
        ("zh_pass", False, True, True, ()),
    ],
)
def test_check_completion_on_benchmark_outputs(key, skipped, line_pass, word_pass, found, words) -> None:
    _, _, _, lang, completion = LCB_OUTPUTS[key]
    check = check_completion(completion, lang, detector=script_detector, words=words)
    assert (check.skipped, check.line_pass, check.word_pass, check.english_words) == (
        skipped, line_pass, word_pass, found
    )


def test_check_completion_hand_written(words: frozenset[str]) -> None:
    lang, text = HAND_OUTPUTS["de_switch"]
    check = check_completion(text, lang, detector=script_detector, words=words)
    assert check.line_languages == ("de", "de", "en") and check.line_pass is False and check.line_errors == 1
    assert check.word_pass is None  # no word-level check for Latin-script German
    lang, text = HAND_OUTPUTS["fr_pass"]
    check = check_completion(text, lang, detector=script_detector, words=words)
    assert check.line_pass is True and check.word_pass is None
    lang, text = HAND_OUTPUTS["ru_word"]
    check = check_completion(text, lang, detector=script_detector, words=words)
    assert check.line_pass is True and check.word_pass is False and check.english_words == ("computer",)
    lang, text = HAND_OUTPUTS["short"]
    check = check_completion(text, lang, detector=script_detector, words=words)
    assert check.skipped and check.line_pass is None


def test_detector_protocol_object_and_unknown(words: frozenset[str]) -> None:
    class Never:
        def detect(self, text: str) -> str | None:
            return None  # never confident: every checked line is an error, as fastText's 'unknown'

    check = check_completion(HAND_OUTPUTS["ar_pass"][1], "ar", detector=Never(), words=words)
    assert check.line_pass is False and check.line_languages == ("?",)
    with pytest.raises(ConfigError):
        check_completion("x y z w v", "de", detector=42)  # type: ignore[arg-type]


def _confusion_rows(words: frozenset[str]) -> list[dict]:
    """Hand-made result rows of two quants; hand-computed pass rates in test_confusion_scores."""
    cases = [  # (quant, lang, subset, completion)
        ("fp16", "ja", "crosslingual/okapi", LCB_OUTPUTS["ja_switch"][4]),  # line fail
        ("fp16", "ja", "crosslingual/okapi", LCB_OUTPUTS["ja_word"][4]),  # line pass, word fail
        ("fp16", "ja", "monolingual/native", HAND_OUTPUTS["short"][1]),  # skipped
        ("fp16", "ja", "monolingual/native", "東京は日本の首都であり、とても大きな都市です。"),  # pass, pass
        ("fp16", "de", "crosslingual/okapi", HAND_OUTPUTS["de_switch"][1]),  # line fail
        ("fp16", "de", "crosslingual/okapi", "Das ist eine Antwort und sie ist auf Deutsch."),  # pass
        ("w4", "ja", "crosslingual/okapi", LCB_OUTPUTS["ja_word"][4]),
        ("w4", "ja", "crosslingual/okapi", LCB_OUTPUTS["ja_word"][4]),
    ]
    rows = []
    for i, (quant, lang, subset, text) in enumerate(cases):
        check = check_completion(text, lang, detector=script_detector, words=words)
        extra = {"subset": subset, "skipped": check.skipped, "line_pass": check.line_pass,
                 "word_pass": check.word_pass}
        rows.append({"quant": quant, "task": "confusion", "lang": lang, "item_id": f"{subset}/{i}",
                     "extra": json.dumps(extra), "score": math.nan if check.skipped else float(check.line_pass)})
    return rows


def test_confusion_scores(words: frozenset[str]) -> None:
    frame = pd.DataFrame(_confusion_rows(words))
    got = confusion_scores(frame, average="item").set_index(["quant", "lang"])
    # fp16/ja pooled: 3 scored, 1 line failure -> LPR 2/3; of the 2 line passes 1 has an English word -> WPR 1/2.
    assert got.loc[("fp16", "ja"), "n"] == 4 and got.loc[("fp16", "ja"), "n_scored"] == 3
    assert got.loc[("fp16", "ja"), "lpr"] == pytest.approx(2 / 3)
    assert got.loc[("fp16", "ja"), "wpr"] == pytest.approx(1 / 2)
    assert got.loc[("fp16", "ja"), "lcpr"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))  # 4/7
    # German: no WPR; LCPR = LPR.
    assert got.loc[("fp16", "de"), "lpr"] == pytest.approx(0.5)
    assert math.isnan(got.loc[("fp16", "de"), "wpr"]) and got.loc[("fp16", "de"), "lcpr"] == pytest.approx(0.5)
    # w4/ja: both pass line-level, both fail word-level.
    assert got.loc[("w4", "ja"), "lpr"] == 1.0 and got.loc[("w4", "ja"), "wpr"] == 0.0
    assert got.loc[("w4", "ja"), "lcpr"] == 0.0
    # The benchmark's per-language number averages over sub-sets: ja = mean(okapi, native).
    # okapi: LPR 1/2, WPR 0/1 = 0; native: LPR 1/1, WPR 1/1 -> LPR 0.75, WPR 0.5.
    macro = confusion_scores(frame).set_index(["quant", "lang"])
    assert macro.loc[("fp16", "ja"), "lpr"] == pytest.approx(0.75)
    assert macro.loc[("fp16", "ja"), "wpr"] == pytest.approx(0.5)
    per_subset = confusion_scores(frame, by=["quant", "subset"]).set_index(["quant", "subset", "lang"])
    assert per_subset.loc[("fp16", "monolingual/native", "ja"), "n_scored"] == 1


def test_confusion_scores_rejects_other_rows() -> None:
    with pytest.raises(DataError):
        confusion_scores([{"lang": "ja", "extra": "{}"}])


def test_confusion_task_items_and_requests(data_dir: Path) -> None:
    task = get_task("confusion", detector=script_detector)
    assert isinstance(task, LanguageConfusion) and task.subsets == SUBSETS
    assert "ja" in task.languages() and "en" in task.languages() and "zh" in task.languages()
    ja = task.items("ja")
    # ja: monolingual/native + the three cross-lingual sub-sets, 100 + 100 + 100 + 99 prompts.
    assert len(ja) == 399
    assert ja[0].id == "monolingual/native/0" and ja[-1].id == "crosslingual/complex_prompts/98"
    req = task.requests(ja[0], get_language("ja"))[0]
    assert isinstance(req, GenerateRequest)
    assert (req.max_new_tokens, req.top_p, req.temperature, req.seed) == (100, 0.75, 0.3, 0)
    assert req.context.startswith("Q: ") and req.context.endswith("\nA:")
    zh = get_task("confusion", subsets="monolingual/aya", template="plain", detector=script_detector)
    items = zh.items("zh", limit=3)
    assert len(items) == 3 and zh.requests(items[0], get_language("zh"))[0].context == items[0].data["prompt"]
    with pytest.raises(ConfigError):
        get_task("confusion", subsets="monolingual/nope")
    with pytest.raises(DataError):
        get_task("confusion", subsets="monolingual/aya").items("ja")


def test_confusion_task_score_with_fake_model(data_dir: Path) -> None:
    task = LanguageConfusion(subsets="crosslingual/okapi", detector=script_detector)
    ja = get_language("ja")
    items = task.items(ja, limit=3)
    outputs = [LCB_OUTPUTS["ja_switch"][4], LCB_OUTPUTS["ja_word"][4], HAND_OUTPUTS["short"][1]]
    model = FakeModel(generate=lambda ctx: outputs[[task.requests(i, ja)[0].context for i in items].index(ctx)])
    scores = [task.score(it, ja, model.generate(task.requests(it, ja))) for it in items]
    assert [s.score for s in scores[:2]] == [0.0, 1.0] and math.isnan(scores[2].score)
    assert scores[1].extra["word_pass"] is False and scores[1].extra["english_words"] == ["based"]
    assert scores[0].extracted == "en,ja,ja"
    table = confusion_scores(scores)
    assert table.loc[0, "lpr"] == pytest.approx(0.5) and table.loc[0, "wpr"] == pytest.approx(0.0)


@pytest.mark.slow
def test_lingua_detector_on_benchmark_and_hand_outputs(words: frozenset[str]) -> None:
    detector = LinguaDetector(languages="benchmark")
    expected = {"ja_switch": (False, None), "ja_word": (True, False), "ko_pass": (True, True), "zh_pass": (True, True)}
    for key, (line_pass, word_pass) in expected.items():
        lang, completion = LCB_OUTPUTS[key][3], LCB_OUTPUTS[key][4]
        check = check_completion(completion, lang, detector=detector, words=words)
        assert (check.line_pass, check.word_pass) == (line_pass, word_pass), (key, check.line_languages)
    check = check_completion(HAND_OUTPUTS["de_switch"][1], "de", detector=detector, words=words)
    assert check.line_languages == ("de", "de", "en") and check.line_pass is False
    assert check_completion(HAND_OUTPUTS["fr_pass"][1], "fr", detector=detector).line_pass is True
    assert check_completion(HAND_OUTPUTS["ar_pass"][1], "ar", detector=detector, words=words).line_pass is True


# ======================================================================================================================
# Open-ended generation and the pairwise judge
# ======================================================================================================================


def preferring_judge(marker: str) -> FakeModel:
    """A judge that prefers the answer containing ``marker`` (ties when both or neither do)."""

    def answer(ctx: str) -> str:
        a = ctx.split("[The Start of Assistant A's Answer]")[1].split("[The End of Assistant A's Answer]")[0]
        b = ctx.split("[The Start of Assistant B's Answer]")[1].split("[The End of Assistant B's Answer]")[0]
        if (marker in a) == (marker in b):
            return "Both are equally good. [[C]]"
        return "Assistant A is better. [[A]]" if marker in a else "Assistant B is better.\n[[B]]"

    return FakeModel(generate=answer, name="judge")


def test_parse_verdict() -> None:
    assert parse_verdict("I think [[A]] ... no wait, [[B]]") == "B"
    assert parse_verdict("[[C]]") == "tie" and parse_verdict(" tie. ") == "tie"
    assert parse_verdict("A") == "A" and parse_verdict("**B**") == "B"
    assert parse_verdict("Both answers are fine") is None


def test_judge_pairs_both_orders_cancel_position_bias() -> None:
    prompts = ["日本の首都は？", "富士山の高さは？", "寿司とは？", "一番長い川は？"]
    base = ["東京です GOOD", "3776メートル", "魚料理 GOOD", "信濃川"]
    quant = ["大阪です", "3776メートル GOOD", "魚料理 GOOD", "利根川"]
    judged = judge_pairs(base, quant, prompts, preferring_judge("GOOD"), "ja", item_ids=["a", "b", "c", "d"])
    assert judged["outcome"].tolist() == ["loss", "win", "tie", "tie"]
    assert judged["verdict_ab"].tolist() == ["A", "B", "tie", "tie"]  # baseline shown as A
    assert judged["verdict_ba"].tolist() == ["B", "A", "tie", "tie"]  # quantized shown as A
    assert judged["score"].tolist() == [0.0, 1.0, 0.5, 0.5]
    # A judge that always picks the first answer shown: every item is a tie once both orders are asked.
    biased = judge_pairs(base, quant, prompts, FakeModel(generate=lambda ctx: "[[A]]"), "ja")
    assert set(biased["outcome"]) == {"tie"}
    rates = win_rates(judged.assign(quant="w4"), by=["quant"])
    assert rates.loc[0, ["n", "win", "tie", "loss", "win_rate"]].tolist() == [4, 0.25, 0.5, 0.25, 0.5]
    with pytest.raises(ConfigError):
        judge_pairs(base, quant[:2], prompts, biased, "ja")  # type: ignore[arg-type]


def test_judge_prompt_shows_texts_verbatim_and_names_language() -> None:
    seen: list[str] = []
    judge = FakeModel(generate=lambda ctx: seen.append(ctx) or "[[C]]")
    judge_pairs(["ответ А"], ["ответ Б"], ["Какая столица России?"], judge, "ru")
    assert len(seen) == 2 and "Russian" in seen[0] and "Какая столица России?" in seen[0]
    assert seen[0].index("ответ А") < seen[0].index("ответ Б") and seen[1].index("ответ Б") < seen[1].index("ответ А")


def _study_frame() -> pd.DataFrame:
    rows = []
    answers = {  # quant -> lang -> outputs of items 0, 1
        "fp16": {"ja": ["良い答え GOOD", "普通の答え"], "ar": ["جواب GOOD", "جواب GOOD"]},
        "w8": {"ja": ["良い答え GOOD", "普通の答え"], "ar": ["جواب GOOD", "جواب"]},
        "w4": {"ja": ["悪い答え", "良い答え GOOD"], "ar": ["جواب", "جواب"]},
    }
    for quant, by_lang in answers.items():
        for lang, outs in by_lang.items():
            for i, out in enumerate(outs):
                rows.append({"quant": quant, "task": "open_ended", "lang": lang, "item_id": f"aya/{i}",
                             "prompt": f"Q: prompt {i}\nA:", "output": out, "score": math.nan, "kind": "generate",
                             "extra": json.dumps({"instruction": f"prompt {i}"})})
    return pd.DataFrame(rows)


def test_judge_results_from_study_frame() -> None:
    seen: list[str] = []
    inner = preferring_judge("GOOD")
    judge = FakeModel(generate=lambda ctx: seen.append(ctx) or inner._gen(ctx))
    judged = judge_results(_study_frame(), judge=judge, baseline="fp16")
    assert set(judged["quant"]) == {"w4", "w8"} and len(judged) == 8
    assert all("Q: prompt" not in ctx and "prompt " in ctx for ctx in seen)  # the raw instruction, not the template
    rates = win_rates(judged).set_index(["quant", "lang"])
    # w4/ja: loses item 0, wins item 1; w4/ar: loses both; w8/ja: ties both; w8/ar: tie, loss.
    assert rates.loc[("w4", "ja"), ["win", "tie", "loss"]].tolist() == [0.5, 0.0, 0.5]
    assert rates.loc[("w4", "ar"), "win_rate"] == 0.0
    assert rates.loc[("w8", "ja"), "win_rate"] == 0.5
    assert rates.loc[("w8", "ar"), ["win", "tie", "loss", "win_rate"]].tolist() == [0.0, 0.5, 0.5, 0.25]
    with pytest.raises(ConfigError):
        judge_results(_study_frame(), judge=judge, baseline="bf16")


class _ChatHandler(http.server.BaseHTTPRequestHandler):
    """A scripted OpenAI-compatible endpoint: answers [[B]] and records what it was sent."""

    received: list[dict] = []
    fail_first: list[int] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])).decode("utf-8"))
        type(self).received.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if type(self).fail_first:
            code = type(self).fail_first.pop(0)
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b'{"error": "scripted failure"}')
            return
        text = "B is better. [[B]]" if "[User Question]" in body["messages"][-1]["content"] else "hello"
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def chat_server():
    _ChatHandler.received = []
    _ChatHandler.fail_first = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_openai_chat_model_against_local_server(chat_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLQ_TEST_KEY", "sk-test-123")
    model = OpenAIChatModel(chat_server, "judge-model", api_key_env="MLQ_TEST_KEY", timeout=5)
    assert model.endpoint == chat_server + "/v1/chat/completions"
    out = model.generate([GenerateRequest("Say hello", max_new_tokens=7, stop=("\n",))])
    assert out == ["hello"]
    sent = _ChatHandler.received[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer sk-test-123"
    assert sent["body"]["model"] == "judge-model" and sent["body"]["max_tokens"] == 7
    assert sent["body"]["messages"] == [{"role": "user", "content": "Say hello"}] and sent["body"]["temperature"] == 0
    assert "sk-test-123" not in repr(model) and "sk-test-123" not in model.fingerprint()
    # As a judge: answers [[B]] in both orders -> the quantized model wins the first order, loses the second: tie.
    judged = judge_pairs(["x"], ["y"], ["q"], model, "en")
    assert judged.loc[0, "outcome"] == "tie" and model.calls == 3
    # Retries a 503, fails on a 400.
    _ChatHandler.fail_first = [503]
    fast = OpenAIChatModel(chat_server + "/v1", "m", api_key_env=None, backoff=0.01, timeout=5)
    assert fast.generate([GenerateRequest("hi")]) == ["hello"] and _ChatHandler.received[-1]["auth"] is None
    _ChatHandler.fail_first = [400]
    with pytest.raises(ConfigError, match="HTTP 400"):
        fast.generate([GenerateRequest("hi")])


def test_openai_chat_model_needs_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLQ_MISSING_KEY", raising=False)
    model = OpenAIChatModel("http://127.0.0.1:9", "m", api_key_env="MLQ_MISSING_KEY")
    with pytest.raises(ConfigError, match="MLQ_MISSING_KEY"):
        model.generate([GenerateRequest("hi")])
    with pytest.raises(ConfigError):
        OpenAIChatModel("127.0.0.1:8000", "m")
    with pytest.raises(ConfigError):
        model.loglikelihood([])


def test_open_ended_task_local(data_dir: Path) -> None:
    task = get_task("open_ended")
    assert isinstance(task, OpenEnded) and task.kind == "generate"
    assert {"ar", "zh", "hi", "en"} <= set(task.languages("local"))
    ar = task.items("ar")  # ar is in both the aya and the dolly samples
    assert len(ar) == 200 and ar[0].id == "aya/0" and ar[100].id == "dolly/0"
    zh = get_language("zh")
    item = task.items(zh)[0]
    assert task.requests(item, zh)[0].context == item.data["prompt"]
    score = task.score(item, zh, ["回答"])
    assert math.isnan(score.score) and score.output == "回答" and score.extra["instruction"] == item.data["prompt"]


def _write_hub_folder(root: Path) -> None:
    """A local dataset folder in the hub's layout and schema of CohereForAI/aya_evaluation_suite."""
    (root / "aya_human_annotated").mkdir(parents=True)
    (root / "dolly_human_edited").mkdir(parents=True)
    aya = [
        {"id": 7, "inputs": "请解释“画蛇添足”的意思。", "targets": "……", "language": "zho", "script": "Hans"},
        {"id": 8, "inputs": "What is a haiku?", "targets": "...", "language": "eng", "script": "Latn"},
        {"id": 9, "inputs": "ما هي عاصمة مصر؟", "targets": "القاهرة", "language": "arb", "script": "Arab"},
    ]
    dolly = [{"id": 3, "inputs": "ما هو التعلم الآلي؟", "targets": "...", "language": "arb", "script": "Arab"}]
    for name, rows in (("aya_human_annotated", aya), ("dolly_human_edited", dolly)):
        with open(root / name / "test.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: aya_human_annotated\n  data_files:\n  - split: test\n"
        "    path: aya_human_annotated/test.jsonl\n- config_name: dolly_human_edited\n  data_files:\n"
        "  - split: test\n    path: dolly_human_edited/test.jsonl\n---\n",
        encoding="utf-8",
    )


def test_open_ended_hub_schema(tmp_path: Path) -> None:
    _write_hub_folder(tmp_path)
    task = OpenEnded(source=f"hub:{tmp_path}")
    zh = task.items("zh")
    assert [(i.id, i.data["prompt"]) for i in zh] == [("aya/7", "请解释“画蛇添足”的意思。")]
    ar = task.items("ar")
    assert [i.id for i in ar] == ["aya/9", "dolly/3"]
    hub = task.hub_source(get_language("ar"), "monolingual/dolly")
    assert hub is not None and hub.path == "CohereForAI/aya_evaluation_suite" and hub.name == "dolly_human_edited"
    assert task.hub_source(get_language("zh"), "monolingual/dolly") is None  # dolly has no Chinese


# ======================================================================================================================
# Similarity to the baseline
# ======================================================================================================================
from mlquant import similarity as sim


def test_multilingual_tokens() -> None:
    assert multilingual_tokens("Das Modell 東京に行く") == ["das", "modell", "東", "京", "に", "行", "く"]
    assert multilingual_tokens("สวัสดีครับ") == list("สวัสดีครับ")
    assert multilingual_tokens("हिन्दी भाषा।") == ["हिन्दी", "भाषा"]  # vowel signs stay in the word, danda dropped
    assert multilingual_tokens("ＡＢＣ　１２３") == ["abc", "123"]
    assert MultilingualTokenizer().tokenize("Привет, мир") == ["привет", "мир"]


def test_rouge_l_and_chrf_hand_computed() -> None:
    # LCS of 東京に行く / 東京へ行く is 4 characters of 5: P = R = F = 0.8.
    assert sim.rouge_l("東京に行く", "東京へ行く") == pytest.approx(0.8)
    # Russian words: hyp 3 words, ref 4 words, LCS 3 -> P = 1, R = 3/4, F = 6/7.
    assert sim.rouge_l("кошка сидит дома", "кошка сидит сегодня дома") == pytest.approx(6 / 7)
    # rouge-score's own tokenizer would see no token at all in these texts.
    assert sim.rouge_l("", "") == 1.0 and sim.rouge_l("abc", "") == 0.0
    import sacrebleu

    assert sim.chrf("le chat est noir", "le chat est blanc") == pytest.approx(
        sacrebleu.sentence_chrf("le chat est noir", ["le chat est blanc"]).score
    )
    assert sim.chrf("同じ文", "同じ文") == 100.0 and sim.chrf("", "") == 100.0


class BagOfCharsEmbedder:
    """Deterministic embedder for tests: character counts over a fixed alphabet."""

    alphabet = "abcdefghijklmnopqrstuvwxyz東京大阪"

    def encode(self, sentences, **kwargs):
        import numpy as np

        return np.array([[s.count(c) for c in self.alphabet] for s in sentences], dtype=float)


def _gen_frame() -> pd.DataFrame:
    rows = [
        ("fp16", "mgsm", "ja", "0", "東京", 1.0, "generate"),
        ("w4", "mgsm", "ja", "0", "大阪", 0.0, "generate"),
        ("w8", "mgsm", "ja", "0", "東京", 1.0, "generate"),
        ("fp16", "mgsm", "ja", "1", "abc", 0.0, "generate"),
        ("w4", "mgsm", "ja", "1", "abd", 1.0, "generate"),
        ("w8", "mgsm", "ja", "1", "abc", 0.0, "generate"),
        ("fp16", "xcopa", "th", "0", "", 1.0, "choice"),
        ("w4", "xcopa", "th", "0", "", 0.0, "choice"),
        ("w8", "xcopa", "th", "0", "", 1.0, "choice"),
        ("fp16", "xcopa", "th", "1", "", 0.0, "choice"),
        ("w4", "xcopa", "th", "1", "", 0.0, "choice"),
        ("w8", "xcopa", "th", "1", "", 1.0, "choice"),
        ("fp16", "xcopa", "th", "2", "", 1.0, "choice"),
        ("w4", "xcopa", "th", "2", "", 1.0, "choice"),
        ("w8", "xcopa", "th", "2", "", 1.0, "choice"),
        ("w4", "xcopa", "th", "3", "", 1.0, "choice"),  # no baseline row: left out
    ]
    return pd.DataFrame(rows, columns=["quant", "task", "lang", "item_id", "output", "score", "kind"])


def test_output_similarity_pairs_by_item() -> None:
    out = sim.output_similarity(_gen_frame(), baseline="fp16", embedder=BagOfCharsEmbedder())
    assert len(out) == 4 and set(out["quant"]) == {"w4", "w8"} and set(out["task"]) == {"mgsm"}
    got = out.set_index(["quant", "item_id"])
    assert got.loc[("w8", "0"), ["chrf", "rouge_l", "cosine"]].tolist() == pytest.approx([100.0, 1.0, 1.0])
    assert got.loc[("w4", "0"), "rouge_l"] == 0.0 and got.loc[("w4", "0"), "cosine"] == pytest.approx(0.0)
    # abd vs abc: one word each, different -> ROUGE-L 0; bag-of-chars cosine = 2 / 3.
    assert got.loc[("w4", "1"), "rouge_l"] == 0.0 and got.loc[("w4", "1"), "cosine"] == pytest.approx(2 / 3)
    with pytest.raises(ConfigError):
        sim.output_similarity(_gen_frame(), baseline="bf16", embedder=BagOfCharsEmbedder())
    with pytest.raises(ConfigError):
        sim.output_similarity(_gen_frame(), metrics=["bleu"])


def test_flip_rate_hand_computed() -> None:
    flips = sim.flip_rate(_gen_frame(), baseline="fp16").set_index("quant")
    # w4 on xcopa/th, items 0-2 (item 3 has no baseline): 1->0, 0->0, 1->1: one flip of 3.
    assert flips.loc["w4", ["n", "flips", "correct_to_wrong", "wrong_to_correct"]].tolist() == [3, 1, 1, 0]
    assert flips.loc["w4", "flip_rate"] == pytest.approx(1 / 3)
    # w8: 1->1, 0->1, 1->1: one flip, accuracy up: flips show change even where accuracy improves.
    assert flips.loc["w8", ["flips", "wrong_to_correct"]].tolist() == [1, 1]
    assert flips.loc["w8", "acc"] == pytest.approx(1.0) and flips.loc["w8", "acc_base"] == pytest.approx(2 / 3)
    everything = sim.flip_rate(_gen_frame(), baseline="fp16", kinds=None).set_index(["quant", "task"])
    assert everything.loc[("w4", "mgsm"), "flips"] == 2


class CharTokenizer:
    """A character tokenizer for the tiny random model (ids 3..66)."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + ord(c) % 64 for c in text]}

    def get_vocab(self):
        return {chr(i): i for i in range(67)}


def _tiny_models(max_length: int = 64):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mlquant._loading import ModelSource
    from mlquant.models import HFModel
    from mlquant.quantize import QuantSpec

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=67, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    base_torch = LlamaForCausalLM(config).eval()
    base = HFModel(base_torch, CharTokenizer(), ModelSource("tiny", "tiny"), QuantSpec(method="none"),
                   max_length=max_length)
    noisy = copy.deepcopy(base_torch)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    quant = base.derive(noisy, QuantSpec.parse("rtn-w4"))
    return base, quant


def _naive_kl(base, quant, text: str) -> float:
    """Full [seq, vocab] computation on one window (the reference)."""
    import torch

    ids = torch.tensor([[1] + CharTokenizer()(text)["input_ids"]])
    with torch.no_grad():
        lb = torch.log_softmax(base.torch_model(ids).logits[0, :-1].double(), -1)
        lq = torch.log_softmax(quant.torch_model(ids).logits[0, :-1].double(), -1)
    return float((lb.exp() * (lb - lq)).sum(-1).mean())


def test_kl_divergence_matches_naive_and_is_chunk_invariant() -> None:
    base, quant = _tiny_models()
    texts = ["hello world", "a", "quantization changes the distribution"]
    assert sim.kl_divergence(base, base, texts) == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)
    got = sim.kl_divergence(base, quant, texts, batch_size=2, chunk_size=5)
    assert got == pytest.approx([_naive_kl(base, quant, t) for t in texts], rel=1e-4)
    assert all(v > 0 for v in got)
    assert sim.kl_divergence(base, quant, texts, batch_size=8, chunk_size=1000) == pytest.approx(got, rel=1e-5)
    assert math.isnan(sim.kl_divergence(base, quant, [""])[0])


def test_kl_divergence_windows_long_texts() -> None:
    base, quant = _tiny_models(max_length=8)  # windows of 7 text tokens after BOS
    text = "abcdefghijklmnopq"  # 17 tokens -> windows of 7, 7, 3
    pieces = [text[0:7], text[7:14], text[14:17]]
    naive = [_naive_kl(base, quant, p) for p in pieces]
    expected = (naive[0] * 7 + naive[1] * 7 + naive[2] * 3) / 17
    assert sim.kl_divergence(base, quant, [text], chunk_size=4)[0] == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
def test_default_embedder_cosine() -> None:
    values = sim.embedding_cosine(
        ["The cat sits on the mat.", "The cat sits on the mat.", "Quarterly revenue rose by four percent."],
        ["A cat is sitting on the mat.", "The cat sits on the mat.", "A cat is sitting on the mat."],
    )
    assert values[1] == pytest.approx(1.0, abs=1e-5) and values[0] > 0.7 and values[2] < 0.3


@pytest.mark.slow
def test_flores_kl_on_gemma(data_dir: Path) -> None:
    from mlquant.models import load_model
    from mlquant.quantize import quantize

    model = load_model("gemma3-270m")
    assert sim.flores_kl(model, model, "ja", limit=2)["kl"].tolist() == pytest.approx([0.0, 0.0], abs=1e-5)
    frame = sim.flores_kl(model, quantize(model, "rtn-w4g32"), "ja", limit=2, chunk_size=16)
    assert list(frame.columns) == ["quant", "task", "lang", "item_id", "kl"] and frame["quant"][0] == "rtn-w4g32"
    assert (frame["kl"] > 0).all() and (frame["kl"] < 5).all()


# ======================================================================================================================
# MGSM: modes, native digits, extraction on real outputs
# ======================================================================================================================


def test_mgsm_modes_and_signature(data_dir: Path) -> None:
    assert MGSM().shots == 8 and MGSM().mode == "few_shot"
    assert MGSM(shots=2, max_new_tokens=64).signature() == "mgsm@1.0[max_new_tokens=64,shots=2]"
    zero = get_task("mgsm", mode="zero_shot_cot")
    assert zero.shots == 0 and zero.signature() == "mgsm@1.0[max_new_tokens=256,shots=0]"
    assert MGSM(shots=0).mode == "zero_shot_cot"
    for bad in ({"mode": "zero_shot_cot", "shots": 8}, {"mode": "few_shot", "shots": 0}, {"mode": "cot"},
                {"digits": "roman"}, {"shots": 9}):
        with pytest.raises(ConfigError):
            MGSM(**bad)
    ja = get_language("ja")
    prompt = zero.prompt(zero.items(ja)[0], ja)
    assert prompt.startswith("問題：") and prompt.endswith("ステップごとの答え：") and prompt.count("問題：") == 1
    eight = MGSM(mode="few_shot")
    assert eight.prompt(eight.items(ja)[0], ja).count("問題：") == 9


@pytest.mark.parametrize(
    ("code", "digits"),
    [("bn", "০১২৩৪৫৬৭৮৯"), ("te", "౦౧౨౩౪౫౬౭౮౯"), ("th", "๐๑๒๓๔๕๖๗๘๙"), ("zh", "０１２３４５６７８９"),
     ("ja", "０１２３４５６７８９")],
)
def test_mgsm_native_digits(code: str, digits: str, data_dir: Path) -> None:
    lang = get_language(code)
    ascii_task, native_task = MGSM(shots=2), MGSM(shots=2, digits="native")
    item = ascii_task.items(lang)[0]  # Janet's ducks: 16 eggs, 3, 4, $2 -> 18
    plain, native = ascii_task.prompt(item, lang), native_task.prompt(item, lang)
    assert any(c.isascii() and c.isdigit() for c in plain)
    assert not any(c.isascii() and c.isdigit() for c in native)
    assert digits[1] + digits[6] in native  # "16" in native digits
    assert native.translate(str.maketrans(digits, "0123456789")) == plain
    assert native_task.signature().startswith("mgsm@1.0[digits=native")
    # The answer in native digits is read back.
    assert extract_number(lang.to_native_digits(f"{lang.prompt.answer_is} 18"), lang) == "18"


def test_mgsm_native_digits_noop_without_native(data_dir: Path) -> None:
    de = get_language("de")
    item = MGSM(shots=1).items(de)[0]
    assert MGSM(shots=1, digits="native").prompt(item, de) == MGSM(shots=1).prompt(item, de)


#: The number in each real Gemma 3 270M output of tests/fixtures/mgsm_outputs.json, found by reading the output
#: (bn and fr end with the language's "The answer is" phrase; the others restate the problem, so the last number).
MGSM_READ = {"bn": "16", "de": "2", "en": "2", "es": "32", "fr": "28", "ja": "2", "ru": "2", "sw": "2", "te": "16",
             "th": "2", "zh": "2"}


def test_mgsm_extraction_on_real_gemma_outputs() -> None:
    fixture = json.loads((FIXTURES / "mgsm_outputs.json").read_text(encoding="utf-8"))
    assert sorted(e["lang"] for e in fixture["outputs"]) == sorted(MGSM_READ)
    assert {e["lang"]: e["expected_extraction"] for e in fixture["outputs"]} == MGSM_READ
    task = MGSM(shots=2, max_new_tokens=120)
    for entry in fixture["outputs"]:
        lang = get_language(entry["lang"])
        got = extract_number(entry["output"], lang)
        assert got == entry["expected_extraction"], (entry["lang"], entry["output"])
        from mlquant.tasks import Item

        item = Item(id=entry["item_id"], data={"question": entry["question"], "answer_number": entry["answer_number"]})
        score = task.score(item, lang, [entry["output"]])
        assert score.extracted == (got or "") and score.score == float(got == str(entry["answer_number"]))


def test_detector_given_as_a_description_string() -> None:
    from mlquant.tasks._lid import FastTextDetector, LinguaDetector, default_detector, detector_from_string

    assert detector_from_string("lingua:benchmark:0.3") is default_detector()
    custom = detector_from_string("lingua:ja+zh:0.5:low")
    assert isinstance(custom, LinguaDetector) and custom.describe() == "lingua:ja+zh:0.5:low"
    assert isinstance(detector_from_string("fasttext:/models/lid.176.bin:0.4"), FastTextDetector)
    task = mq.get_task("confusion", detector="lingua:ja+zh:0.5")
    assert "detector=lingua:ja+zh:0.5" in task.signature()
    with pytest.raises(ConfigError, match="detector='langid'"):
        mq.get_task("confusion", detector="langid")
