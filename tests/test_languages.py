"""Tests of the reviewed language files (languages/*.yaml) and of their loader, mlquant.languages."""

from __future__ import annotations

import json
import os
import shutil
import unicodedata
from pathlib import Path

import pytest
import yaml

from mlquant.errors import ConfigError, UnknownNameError
from mlquant.languages import PROMPT_KEYS, get_language, languages_dir, list_languages, load_language_file

AYA23 = set("ar zh cs nl en fr de el he hi id it ja ko fa pl pt ro ru es tr uk vi".split())
EXTRAS = set("sw th bn te ta et ht qu bg ur".split())
ALL_CODES = AYA23 | EXTRAS
MGSM_LANGS = set("bn de en es fr ja ru sw te th zh".split())
BENCHMARKS = {
    "belebele", "xcopa", "mgsm", "xwinograd", "xstorycloze", "xnli", "xquad", "global_mmlu", "language_confusion",
}


REPO_LANGUAGES = Path(__file__).resolve().parent.parent / "languages"


@pytest.fixture(autouse=True)
def _languages_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read the repository's languages/ when neither MLQUANT_LANGUAGES_DIR nor the packaged copy is available.

    In a source checkout without an install that maps languages/ to mlquant.language_data, the default
    languages_dir() cannot be resolved; the files under test are the ones in this checkout anyway.
    """
    if os.environ.get("MLQUANT_LANGUAGES_DIR"):
        return
    try:
        languages_dir()
    except ModuleNotFoundError:
        monkeypatch.setenv("MLQUANT_LANGUAGES_DIR", str(REPO_LANGUAGES))


def _files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(languages_dir().glob("*.yaml"))}


def _copy(tmp_path: Path, code: str = "en") -> tuple[Path, dict]:
    """Copy a language file into tmp_path; return the copy and its parsed content."""
    dest = tmp_path / f"{code}.yaml"
    shutil.copy(languages_dir() / f"{code}.yaml", dest)
    return dest, yaml.safe_load(dest.read_text(encoding="utf-8"))


def _write(path: Path, raw: dict) -> None:
    path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")


# ------------------------------------------------------------------------------------------------- the files


def test_the_33_languages_are_exactly_aya23_plus_extras() -> None:
    assert len(AYA23) == 23 and len(EXTRAS) == 10
    assert set(_files()) == ALL_CODES
    assert {lang.code for lang in list_languages()} == ALL_CODES


@pytest.mark.parametrize("code", sorted(ALL_CODES))
def test_every_file_loads(code: str) -> None:
    lang = load_language_file(languages_dir() / f"{code}.yaml")
    assert lang.code == code
    assert get_language(code) == lang
    assert set(lang.provenance) >= set(PROMPT_KEYS) | {"resource_class"}
    assert set(lang.datasets) == BENCHMARKS
    assert all(v is None or (isinstance(v, str) and v) for v in lang.datasets.values())
    assert lang.stop_sequences[0] == "\n\n"
    assert lang.stop_sequences[1] == lang.prompt.question + lang.label_separator.rstrip()
    assert lang.uses_spaces == (code not in {"zh", "ja", "th"})


@pytest.mark.parametrize("code", sorted(ALL_CODES))
def test_file_has_exactly_the_keys_of_en(code: str) -> None:
    def keys(c: str) -> tuple:
        raw = yaml.safe_load((languages_dir() / f"{c}.yaml").read_text(encoding="utf-8"))
        return set(raw), set(raw["prompt"]), set(raw["numbers"]), set(raw["datasets"])

    assert keys(code) == keys("en")


def test_dataset_codes_follow_the_hub_conventions() -> None:
    langs = {lang.code: lang for lang in list_languages()}
    assert {c for c, lang in langs.items() if lang.dataset_code("mgsm")} == MGSM_LANGS
    assert langs["ja"].dataset_code("xwinograd") == "jp"
    assert langs["ar"].dataset_code("xquad") == "xquad.ar"
    assert langs["ja"].dataset_code("belebele") == "jpn_Jpan"
    assert langs["qu"].dataset_code("belebele") is None  # Belebele has no Quechua
    for code, lang in langs.items():
        if code != "qu":
            assert lang.dataset_code("belebele") == lang.flores
    assert {c for c, lang in langs.items() if lang.dataset_code("xcopa")} == set("et ht id it qu sw ta th tr vi zh".split())
    assert {c for c, lang in langs.items() if lang.dataset_code("xnli")} == set(
        "ar bg de el en es fr hi ru sw th tr ur vi zh".split()
    )


# ------------------------------------------------------------------------------------------------- the schema


def test_missing_key_is_rejected_naming_file_and_key(tmp_path: Path) -> None:
    path, raw = _copy(tmp_path)
    del raw["flores"]
    _write(path, raw)
    with pytest.raises(ConfigError) as err:
        load_language_file(path)
    assert str(path) in str(err.value) and "'flores'" in str(err.value)


def test_missing_prompt_word_is_rejected(tmp_path: Path) -> None:
    path, raw = _copy(tmp_path)
    del raw["prompt"]["because"]
    _write(path, raw)
    with pytest.raises(ConfigError) as err:
        load_language_file(path)
    assert str(path) in str(err.value) and "because" in str(err.value)


def test_unknown_key_is_rejected_naming_file_and_key(tmp_path: Path) -> None:
    path, raw = _copy(tmp_path)
    raw["flavour"] = "vanilla"
    _write(path, raw)
    with pytest.raises(ConfigError) as err:
        load_language_file(path)
    assert str(path) in str(err.value) and "'flavour'" in str(err.value)


def test_bad_resource_class_is_rejected_with_the_value(tmp_path: Path) -> None:
    path, raw = _copy(tmp_path)
    raw["resource_class"] = 7
    _write(path, raw)
    with pytest.raises(ConfigError) as err:
        load_language_file(path)
    assert str(path) in str(err.value) and "resource_class" in str(err.value) and "7" in str(err.value)


def test_bad_script_is_rejected_with_the_value(tmp_path: Path) -> None:
    path, raw = _copy(tmp_path)
    raw["script"] = "latin"
    _write(path, raw)
    with pytest.raises(ConfigError) as err:
        load_language_file(path)
    assert str(path) in str(err.value) and "'latin'" in str(err.value)


# ------------------------------------------------------------------------------------------------- look-ups


def test_unknown_language_raises_with_a_suggestion() -> None:
    with pytest.raises(UnknownNameError):
        get_language("xx")
    with pytest.raises(UnknownNameError) as err:
        get_language("jq")
    assert "Did you mean" in str(err.value) and "'ja'" in str(err.value).split("Known:")[0]


def test_list_languages_by_script() -> None:
    latin = [lang.code for lang in list_languages(script="Latn")]
    assert "en" in latin and "ja" not in latin
    assert all(lang.is_latin for lang in list_languages(script="Latn"))
    assert [lang.code for lang in list_languages(script="Jpan")] == ["ja"]


def test_resource_classes() -> None:
    assert {lang.code for lang in list_languages(resource_class=5)} == set("ar de en es fr ja zh".split())
    assert all(0 <= lang.resource_class <= 5 for lang in list_languages())


# ------------------------------------------------------------------------------------------------- prompt words


@pytest.mark.skipif(not os.environ.get("MLQUANT_DATA_DIR"), reason="MLQUANT_DATA_DIR is not set")
@pytest.mark.parametrize("code", sorted(MGSM_LANGS))
def test_mgsm_prompt_words_equal_the_exemplars(code: str) -> None:
    path = Path(os.environ["MLQUANT_DATA_DIR"]) / "mgsm" / "exemplars" / f"{code}.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert rows
    lang = get_language(code)
    for row in rows:
        assert row["question"].startswith(lang.label("question")), row["question"][:40]
        assert row["answer"].startswith(lang.label("step_by_step_answer")), row["answer"][:40]
    first = rows[0]
    n = first["answer_number"]
    assert f"{lang.prompt.answer_is} {n}" in first["answer"] or f"{lang.prompt.answer_is}{n}" in first["answer"]


@pytest.mark.parametrize("code", sorted(ALL_CODES))
def test_native_digits_are_the_ten_digits_in_order(code: str) -> None:
    digits = get_language(code).native_digits
    if digits is None:
        return
    assert len(digits) == 10 and len(set(digits)) == 10
    for i, ch in enumerate(digits):
        assert unicodedata.digit(ch) == i, (code, i, ch)
    assert get_language(code).to_native_digits("2025") == digits[2] + digits[0] + digits[2] + digits[5]


def test_native_digits_where_expected() -> None:
    with_digits = {lang.code for lang in list_languages() if lang.native_digits}
    assert with_digits == set("ar fa ur hi bn te ta th zh ja".split())


def test_prompt_words_have_no_stray_whitespace() -> None:
    for lang in list_languages():
        for key in PROMPT_KEYS:
            word = getattr(lang.prompt, key)
            assert word == word.strip(), (lang.code, key, word)
            assert "\n" not in word


@pytest.mark.skipif(not os.environ.get("MLQUANT_DATA_DIR"), reason="MLQUANT_DATA_DIR is not set")
def test_flores_codes_match_the_shared_flores_copy() -> None:
    path = Path(os.environ["MLQUANT_DATA_DIR"]) / "flores200" / "languages.json"
    if not path.exists():
        pytest.skip(f"{path} not found")
    mapping = json.loads(path.read_text(encoding="utf-8"))["iso_to_flores"]
    assert {code: get_language(code).flores for code in mapping} == mapping


def test_unknown_dataset_key_is_rejected(tmp_path) -> None:
    import pytest

    from mlquant.errors import ConfigError
    from mlquant.languages import languages_dir, load_language_file

    text = (languages_dir() / "fr.yaml").read_text(encoding="utf-8").replace("  belebele:", "  belebel:", 1)
    path = tmp_path / "fr.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"fr.yaml: unknown key datasets.'belebel'"):
        load_language_file(path)
