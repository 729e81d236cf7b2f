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
    assert set(lang.datasets) <= BENCHMARKS  # a file lists only the benchmarks that have the language
    assert all(isinstance(v, str) and v for v in lang.datasets.values())  # absence, not null, means "no data"
    assert lang.stop_sequences[0] == "\n\n"
    assert lang.stop_sequences[1] == lang.prompt.question + lang.label_separator.rstrip()
    assert lang.uses_spaces == (code not in {"zh", "ja", "th"})


@pytest.mark.parametrize("code", sorted(ALL_CODES))
def test_file_has_exactly_the_keys_of_en(code: str) -> None:
    def keys(c: str) -> tuple:
        raw = yaml.safe_load((languages_dir() / f"{c}.yaml").read_text(encoding="utf-8"))
        return set(raw), set(raw["prompt"]), set(raw["numbers"])  # not datasets: each file lists its own

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


# ------------------------------------------------------------------------------------------------- dataset codes
# A language file lists only the benchmarks that have the language; a missing key means "no data in this language".

#: Every dataset code of the reviewed files (checked against lm-evaluation-harness @ 4e7e0d47; see languages/README.md).
DATASET_CODES: dict[str, dict[str, str]] = {
    "belebele": {
        "ar": "arb_Arab", "bg": "bul_Cyrl", "bn": "ben_Beng", "cs": "ces_Latn", "de": "deu_Latn", "el": "ell_Grek",
        "en": "eng_Latn", "es": "spa_Latn", "et": "est_Latn", "fa": "pes_Arab", "fr": "fra_Latn", "he": "heb_Hebr",
        "hi": "hin_Deva", "ht": "hat_Latn", "id": "ind_Latn", "it": "ita_Latn", "ja": "jpn_Jpan", "ko": "kor_Hang",
        "nl": "nld_Latn", "pl": "pol_Latn", "pt": "por_Latn", "ro": "ron_Latn", "ru": "rus_Cyrl", "sw": "swh_Latn",
        "ta": "tam_Taml", "te": "tel_Telu", "th": "tha_Thai", "tr": "tur_Latn", "uk": "ukr_Cyrl", "ur": "urd_Arab",
        "vi": "vie_Latn", "zh": "zho_Hans",
    },
    "xcopa": {c: c for c in "et ht id it qu sw ta th tr vi zh".split()},
    "mgsm": {c: c for c in "bn de en es fr ja ru sw te th zh".split()},
    "xwinograd": {"en": "en", "fr": "fr", "ja": "jp", "pt": "pt", "ru": "ru", "zh": "zh"},
    "xstorycloze": {c: c for c in "ar en es hi id ru sw te zh".split()},
    "xnli": {c: c for c in "ar bg de el en es fr hi ru sw th tr ur vi zh".split()},
    "xquad": {c: f"xquad.{c}" for c in "ar de el en es hi ro ru th tr vi zh".split()},
    "global_mmlu": {c: c for c in "ar bn cs de el en es fa fr he hi id it ja ko nl pl pt ro ru sw te tr uk vi zh".split()},
    "language_confusion": {c: c for c in "ar de en es fr hi id it ja ko pt ru tr vi zh".split()},
}


def _with_datasets(tmp_path: Path, datasets_yaml: str, code: str = "fr") -> Path:
    """A copy of ``<code>.yaml`` in tmp_path whose ``datasets`` block is replaced by ``datasets_yaml`` (raw YAML)."""
    text = (languages_dir() / f"{code}.yaml").read_text(encoding="utf-8")
    lines = text.split("\n")
    start = lines.index("datasets:")
    end = start + 1
    while lines[end].startswith("  "):
        end += 1
    path = tmp_path / f"{code}.yaml"
    path.write_text("\n".join([*lines[:start], datasets_yaml.rstrip("\n"), *lines[end:]]), encoding="utf-8")
    return path


def test_the_files_give_exactly_the_reviewed_dataset_codes() -> None:
    from mlquant.languages import DATASET_KEYS

    assert set(DATASET_KEYS) == BENCHMARKS == set(DATASET_CODES)
    got = {b: {lang.code: lang.datasets[b] for lang in list_languages() if b in lang.datasets} for b in BENCHMARKS}
    assert got == DATASET_CODES
    for bench, codes in DATASET_CODES.items():
        for lang in list_languages():
            assert lang.dataset_code(bench) == codes.get(lang.code), (bench, lang.code)


def test_a_missing_benchmark_key_means_no_data() -> None:
    en, qu = get_language("en"), get_language("qu")
    assert "xcopa" not in en.datasets and en.dataset_code("xcopa") is None
    assert qu.dataset_code("belebele") is None and qu.dataset_code("xcopa") == "qu"
    assert en.dataset_code("no_such_benchmark") is None  # never an error: tasks ask every language


def test_tasks_see_only_the_languages_whose_file_has_the_key() -> None:
    from mlquant.tasks import get_task

    assert sorted(get_task("xcopa").hub_languages()) == sorted(DATASET_CODES["xcopa"])
    assert sorted(get_task("belebele").hub_languages()) == sorted(DATASET_CODES["belebele"])


def test_a_new_benchmark_needs_only_the_files_of_its_languages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlquant.tasks import Task

    folder = tmp_path / "languages"
    shutil.copytree(languages_dir(), folder)
    for code, value in (("ja", "jpn"), ("sw", "swa")):
        path = folder / f"{code}.yaml"
        path.write_text(
            path.read_text(encoding="utf-8").replace("datasets:\n", f'datasets:\n  my_bench: "{value}"\n', 1),
            encoding="utf-8",
        )
    monkeypatch.setenv("MLQUANT_LANGUAGES_DIR", str(folder))
    assert {lang.code for lang in list_languages()} == ALL_CODES  # the 31 other files are untouched and still load
    assert {lang.code: lang.dataset_code("my_bench") for lang in list_languages() if lang.dataset_code("my_bench")} == {
        "ja": "jpn",
        "sw": "swa",
    }
    assert get_language("en").dataset_code("my_bench") is None

    class MyBench(Task):  # hub_languages() comes from the base class, unchanged
        name, version, kind, difficulty, metric, benchmark = "my_bench", "1.0", "choice", "easy", "accuracy", "my_bench"

        def load_items(self, lang):  # pragma: no cover - not called
            return []

        def requests(self, item, lang):  # pragma: no cover - not called
            return []

        def score(self, item, lang, outputs):  # pragma: no cover - not called
            raise NotImplementedError

    assert sorted(MyBench().hub_languages()) == ["ja", "sw"]


def test_an_empty_datasets_mapping_loads(tmp_path: Path) -> None:
    lang = load_language_file(_with_datasets(tmp_path, "datasets: {}"))
    assert dict(lang.datasets) == {} and lang.dataset_code("belebele") is None


@pytest.mark.parametrize("value", ["null", "[belebele]", '"fra_Latn"'])
def test_datasets_that_is_not_a_mapping_is_rejected(tmp_path: Path, value: str) -> None:
    path = _with_datasets(tmp_path, f"datasets: {value}")
    with pytest.raises(ConfigError, match=r"key 'datasets' must be a mapping") as err:
        load_language_file(path)
    assert str(path) in str(err.value) and "{}" in str(err.value)


def test_an_explicit_null_still_loads_and_means_no_data(tmp_path: Path) -> None:
    # Files written before the mapping was open said "no data" with null; they keep loading.
    lang = load_language_file(_with_datasets(tmp_path, 'datasets:\n  belebele: "fra_Latn"\n  xcopa: null'))
    assert lang.dataset_code("xcopa") is None and lang.dataset_code("belebele") == "fra_Latn"
    assert "xcopa" in lang.datasets  # mmlu's m_mmlu fallback tells "null in the file" from "not in the file"


@pytest.mark.parametrize("key", ["m_mmlu", "paws_x", "xlsum", "mmmlu", "aya_eval2"])
def test_a_well_formed_benchmark_of_ones_own_is_accepted(tmp_path: Path, key: str) -> None:
    lang = load_language_file(_with_datasets(tmp_path, f'datasets:\n  belebele: "fra_Latn"\n  {key}: "fr"'))
    assert lang.dataset_code(key) == "fr" and lang.dataset_code("belebele") == "fra_Latn"


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        ("belebel", "belebele"),  # a letter dropped
        ("xcpoa", "xcopa"),  # two letters swapped
        ("mgsmm", "mgsm"),  # a letter added
        ("xnlj", "xnli"),  # a letter changed
        ("xstory_cloze", "xstorycloze"),  # the hub id's spelling
        ("global_mmul", "global_mmlu"),
    ],
)
def test_a_typo_of_a_known_benchmark_is_rejected_with_did_you_mean(tmp_path: Path, key: str, meant: str) -> None:
    path = _with_datasets(tmp_path, f'datasets:\n  belebele: "fra_Latn"\n  {key}: "fr"')
    with pytest.raises(ConfigError) as err:
        load_language_file(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: unknown key datasets.{key!r}.")
    assert f"Did you mean {meant!r}?" in msg and "Known benchmarks: belebele, global_mmlu," in msg


@pytest.mark.parametrize("key", ["flores", "flroes", "flores200"])
def test_flores_under_datasets_points_to_the_top_level_key(tmp_path: Path, key: str) -> None:
    path = _with_datasets(tmp_path, f'datasets:\n  belebele: "fra_Latn"\n  {key}: "fra_Latn"')
    with pytest.raises(ConfigError) as err:
        load_language_file(path)
    assert str(path) in str(err.value) and repr(key) in str(err.value)
    assert "top-level key 'flores'" in str(err.value)


@pytest.mark.parametrize(
    ("key_yaml", "shown", "hint"),
    [
        ("XCOPA", "'XCOPA'", "Did you mean 'xcopa'?"),
        ("x-copa", "'x-copa'", "Did you mean 'xcopa'?"),
        ("2xcopa", "'2xcopa'", ""),
        ("yes", "True", ""),  # YAML 1.1 reads an unquoted yes as a boolean
        ("1", "1", ""),
    ],
)
def test_a_benchmark_key_that_is_not_a_name_is_rejected(tmp_path: Path, key_yaml: str, shown: str, hint: str) -> None:
    path = _with_datasets(tmp_path, f'datasets:\n  {key_yaml}: "fr"')
    with pytest.raises(ConfigError) as err:
        load_language_file(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: key datasets.{shown} is not a benchmark name")
    assert hint in msg and "Known benchmarks:" in msg


@pytest.mark.parametrize("value", ['""', '"  "', "5", "[fr]", "{code: fr}", "true"])
def test_a_dataset_code_that_is_not_a_string_is_rejected(tmp_path: Path, value: str) -> None:
    path = _with_datasets(tmp_path, f"datasets:\n  xcopa: {value}")
    with pytest.raises(ConfigError) as err:
        load_language_file(path)
    assert str(err.value).startswith(f"{path}: key 'datasets.xcopa' must be a non-empty dataset code string, got ")


def test_readme_lists_each_benchmark_with_its_languages() -> None:
    text = (REPO_LANGUAGES / "README.md").read_text(encoding="utf-8")
    for bench in BENCHMARKS:
        assert f"| {bench} (" in text, bench
