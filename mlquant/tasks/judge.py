"""Open-ended generation judged pairwise against the baseline (Marchisio et al. 2024a, LLM-as-a-judge).

Two steps, because a judged comparison needs *both* models' answers to the same prompt:

1. **generate** — the task ``open_ended`` only generates: every quant of a study answers the same prompts (the
   Aya Evaluation Suite's ``aya_human_annotated`` and ``dolly_human_edited`` prompts: the 100-prompt samples in
   ``language_confusion/monolingual/{aya,dolly}`` locally, ``CohereForAI/aya_evaluation_suite`` on the hub). Its
   per-item score is NaN; the output is stored in the results like any other.
2. **judge** — afterwards, :func:`judge_results` pairs each quantized model's output with the baseline's output for
   the same item and asks a judge model which is better, **in both orders** (baseline first, then quantized first)
   to cancel position bias. The quantized model *wins* an item when the judge prefers it in both orders, *loses*
   when the judge prefers the baseline in both, and *ties* otherwise (an explicit tie, a split verdict, or an
   unreadable answer). :func:`win_rates` summarises per (quant, task, lang).

The judge is any mlquant model: a local :class:`~mlquant.models.HFModel`, or an OpenAI-compatible chat endpoint
through :class:`OpenAIChatModel` (urllib only; the API key is read from an environment variable, never stored).

The judge's instructions are English (:data:`JUDGE_TEMPLATE`), as in the paper: they are not a prompt in the
evaluated language — the evaluated prompts and answers are shown to the judge verbatim.

Example:
    >>> import pandas as pd
    >>> from mlquant.models import FakeModel
    >>> judge = FakeModel(generate=lambda ctx: "[[A]]")  # always prefers the first answer shown
    >>> frame = judge_pairs(["a good answer"], ["a worse answer"], ["question?"], judge, "en")
    >>> frame.loc[0, ["verdict_ab", "verdict_ba", "outcome"]].tolist()
    ['A', 'A', 'tie']
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from mlquant.data import HubSource, local_file, require
from mlquant.errors import ConfigError, DataError
from mlquant.languages import Language, get_language
from mlquant.requests import (
    GenerateRequest,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    Request,
    RollingRequest,
    RollingResult,
    cut_at_stop,
)
from mlquant.tasks import Difficulty, Item, ItemScore, Task, TaskKind, register_task
from mlquant.tasks.confusion import Template, format_prompt

if TYPE_CHECKING:
    import pandas as pd

    from mlquant.requests import LanguageModel as Model

__all__ = [
    "JUDGE_TEMPLATE",
    "OpenAIChatModel",
    "OpenEnded",
    "judge_pairs",
    "judge_results",
    "parse_verdict",
    "win_rates",
]

log = logging.getLogger(__name__)

#: Hub dataset of the open-ended prompts (Singh et al. 2024, the Aya Evaluation Suite).
AYA_EVAL_SUITE = "CohereForAI/aya_evaluation_suite"
#: Local sub-set folder -> hub configuration of the Aya Evaluation Suite.
SUBSETS: dict[str, str] = {"monolingual/aya": "aya_human_annotated", "monolingual/dolly": "dolly_human_edited"}
#: Languages (with a language file) of each hub configuration (aya: also yo; dolly: also sr).
HUB_LANGUAGES: dict[str, tuple[str, ...]] = {
    "monolingual/aya": ("ar", "en", "pt", "te", "tr", "zh"),
    "monolingual/dolly": ("ar", "es", "fr", "hi", "ru"),
}
#: ISO 639-3 codes the hub dataset may use for a language (individual and macro-language codes).
ISO639_3: dict[str, tuple[str, ...]] = {
    "ar": ("arb", "ara"), "en": ("eng",), "es": ("spa",), "fr": ("fra",), "hi": ("hin",), "pt": ("por",),
    "ru": ("rus",), "te": ("tel",), "tr": ("tur",), "zh": ("zho", "cmn"),
}

#: The pairwise judge prompt (English instructions; the evaluated texts are inserted verbatim).
JUDGE_TEMPLATE = """Please act as an impartial judge and evaluate the quality of the two responses that two AI \
assistants gave to the user question below. The user writes in {language}, and a good response is written in \
{language}. Choose the assistant that follows the user's instructions and answers the question better, considering \
helpfulness, relevance, accuracy, depth, fluency in {language}, and level of detail. Do not let the order in which \
the responses appear, their length, or the assistants' names influence your decision. Be as objective as possible.
After a short explanation, give your verdict in exactly this format: "[[A]]" if assistant A is better, "[[B]]" if \
assistant B is better, "[[C]]" for a tie.

[User Question]
{question}

[The Start of Assistant A's Answer]
{answer_a}
[The End of Assistant A's Answer]

[The Start of Assistant B's Answer]
{answer_b}
[The End of Assistant B's Answer]"""

_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


class OpenEnded(Task):
    """Open-ended prompts answered by every model of a study; scored later by :func:`judge_results`.

    Args:
        subsets: ``"all"`` (both), ``"aya"`` or ``"dolly"`` (or the full names ``monolingual/aya`` ...).
        template: ``"plain"`` (the prompt alone) or ``"qa"`` (``Q: ...\\nA:``, for base models).
        max_new_tokens: generation budget (default 256).
        temperature, top_p, seed: decoding (default greedy).
        source: data folder or ``hub:<id>`` (see :mod:`mlquant.data`).
    """

    name: ClassVar[str] = "open_ended"
    version: ClassVar[str] = "1.0"
    kind: ClassVar[TaskKind] = "generate"
    difficulty: ClassVar[Difficulty] = "hard"
    metric: ClassVar[str] = "judged"
    benchmark: ClassVar[str] = "language_confusion"
    split: ClassVar[str] = "monolingual/aya"

    def __init__(
        self,
        subsets: str | Sequence[str] = "all",
        template: Template = "plain",
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        source: str | None = None,
    ) -> None:
        super().__init__(source=source)
        names = [subsets] if isinstance(subsets, str) else list(subsets)
        chosen: list[str] = []
        for name in names:
            if name == "all":
                chosen.extend(SUBSETS)
            elif name in SUBSETS:
                chosen.append(name)
            elif f"monolingual/{name}" in SUBSETS:
                chosen.append(f"monolingual/{name}")
            else:
                raise ConfigError(f"open_ended: unknown sub-set {name!r}; expected 'all', 'aya' or 'dolly'.")
        self.subsets = tuple(dict.fromkeys(chosen))
        format_prompt("", template)
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"open_ended: max_new_tokens={max_new_tokens!r}; expected a positive integer.")
        self.template = template
        self.max_new_tokens = max_new_tokens
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.seed = int(seed)

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "subsets": "+".join(s.split("/")[1] for s in self.subsets),
            "template": self.template,
            "max_new_tokens": self.max_new_tokens,
        }
        if self.temperature > 0:
            opts.update(temperature=self.temperature, top_p=self.top_p, seed=self.seed)
        return opts

    # ----- data -------------------------------------------------------------------------------------------------------
    def hub_source(self, lang: Language, split: str) -> HubSource | None:
        config = SUBSETS.get(split)
        if config is None or lang.code not in HUB_LANGUAGES[split]:
            return None

        def convert(row: dict[str, Any]) -> dict[str, Any]:
            return {"id": row["id"], "prompt": row["inputs"], "source": config, "language": row["language"]}

        return HubSource(AYA_EVAL_SUITE, config, "test", convert=convert)

    def hub_languages(self) -> list[str]:
        return sorted({code for s in self.subsets for code in HUB_LANGUAGES[s]})

    def languages(self, where: Literal["any", "local", "hub"] = "any") -> list[str]:
        from mlquant.data import available_languages

        codes: set[str] = set()
        for subset in self.subsets:
            codes.update(available_languages(self.benchmark, subset, hub_codes=HUB_LANGUAGES[subset], where=where))
        return sorted(codes)

    def load_items(self, lang: Language) -> list[Item]:
        use_hub = self.source is not None and str(self.source).startswith("hub:")
        wanted = {lang.code, *ISO639_3.get(lang.code, ())}
        items: list[Item] = []
        for subset in self.subsets:
            has_local = not use_hub and local_file(self.benchmark, subset, lang.code, self.source) is not None
            if not has_local and self.hub_source(lang, subset) is None:
                continue  # neither a local file nor this language in the hub configuration
            for row in self.rows(lang, split=subset):
                language = str(row.get("language", lang.code))
                if language not in wanted:  # the hub files hold every language in one split
                    continue
                rid = require(row, "id", (int, str))
                items.append(Item(id=f"{subset.split('/')[1]}/{rid}", data={"prompt": require(row, "prompt"),
                                                                            "subset": subset}))
        if not items:
            raise DataError(f"open_ended: no prompts for {lang.code!r} in sub-sets {', '.join(self.subsets)}.")
        return items

    # ----- prompting and scoring --------------------------------------------------------------------------------------
    def requests(self, item: Item, lang: Language) -> list[Request]:
        return [
            GenerateRequest(
                format_prompt(item.data["prompt"], self.template),
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                seed=self.seed,
            )
        ]

    def score(self, item: Item, lang: Language, outputs: Sequence[Any]) -> ItemScore:
        return ItemScore(
            score=math.nan,
            prompt=format_prompt(item.data["prompt"], self.template),
            output=str(outputs[0]),
            extracted="",
            target="",
            extra={"instruction": item.data["prompt"], "subset": item.data["subset"]},
        )


register_task("open_ended", OpenEnded)


# ----- the judge --------------------------------------------------------------------------------------------------
def parse_verdict(text: str) -> Literal["A", "B", "tie"] | None:
    """The judge's verdict: the last ``[[A]]`` / ``[[B]]`` / ``[[C]]`` (tie) in ``text``; else a bare ``A``, ``B`` or
    ``tie`` when the whole answer is that word; None when unreadable.

    Example:
        >>> parse_verdict("Assistant B is more fluent. [[B]]"), parse_verdict("[[C]]"), parse_verdict("hmm")
        ('B', 'tie', None)
    """
    found: list[str] = _VERDICT.findall(text)  # one group: A, B or C
    if found:
        v = found[-1]
        return "A" if v == "A" else "B" if v == "B" else "tie"
    bare = text.strip().strip(".*\"'[]() ").lower()
    if bare == "a":
        return "A"
    if bare == "b":
        return "B"
    if bare in ("c", "tie"):
        return "tie"
    return None


def _outcome(ab: str | None, ba: str | None) -> str:
    """From the quantized model's side: ab shows (A=baseline, B=quantized), ba shows (A=quantized, B=baseline)."""
    q_ab = {"B": 1, "A": -1}.get(ab or "", 0)
    q_ba = {"A": 1, "B": -1}.get(ba or "", 0)
    if q_ab == 1 and q_ba == 1:
        return "win"
    if q_ab == -1 and q_ba == -1:
        return "loss"
    return "tie"


def judge_pairs(
    baseline_outputs: Sequence[str],
    quantized_outputs: Sequence[str],
    prompts: Sequence[str],
    judge: Model,
    lang: Language | str,
    *,
    item_ids: Sequence[str] | None = None,
    template: str = JUDGE_TEMPLATE,
    max_new_tokens: int = 512,
) -> pd.DataFrame:
    """Judge each (baseline, quantized) answer pair in both orders.

    Args:
        baseline_outputs, quantized_outputs, prompts: aligned per item (same length).
        judge: any model with ``generate`` (greedy requests are sent, two per item).
        lang: the language the prompts are in (named in the judge prompt).
        item_ids: ids of the items (default ``0..n-1``).
        template: judge prompt with ``{language}``, ``{question}``, ``{answer_a}``, ``{answer_b}``.
        max_new_tokens: budget of the judge's answer.

    Returns:
        One row per item: ``item_id``, ``lang``, ``verdict_ab`` (baseline shown as A), ``verdict_ba`` (quantized
        shown as A), ``outcome`` (``win`` / ``tie`` / ``loss`` for the quantized model), ``score`` (1 / 0.5 / 0),
        ``judge_ab`` and ``judge_ba`` (the judge's raw answers).
    """
    import pandas as pd

    language = get_language(lang)
    n = len(prompts)
    if not (len(baseline_outputs) == len(quantized_outputs) == n):
        raise ConfigError(
            f"judge_pairs: {len(baseline_outputs)} baseline outputs, {len(quantized_outputs)} quantized outputs and "
            f"{n} prompts; expected the same number of each (one per item)."
        )
    ids = [str(i) for i in range(n)] if item_ids is None else [str(i) for i in item_ids]
    if len(ids) != n:
        raise ConfigError(f"judge_pairs: {len(ids)} item_ids for {n} prompts.")
    for key in ("{question}", "{answer_a}", "{answer_b}"):
        if key not in template:
            raise ConfigError(f"judge_pairs: the judge template lacks {key}.")
    requests = []
    for p, b, q in zip(prompts, baseline_outputs, quantized_outputs, strict=True):  # lengths checked above
        for a_text, b_text in ((b, q), (q, b)):
            ctx = template.format(language=language.name, question=p, answer_a=a_text, answer_b=b_text)
            requests.append(GenerateRequest(ctx, max_new_tokens=max_new_tokens))
    answers = judge.generate(requests) if requests else []
    rows = []
    for i in range(n):
        raw_ab, raw_ba = str(answers[2 * i]), str(answers[2 * i + 1])
        ab, ba = parse_verdict(raw_ab), parse_verdict(raw_ba)
        outcome = _outcome(ab, ba)
        rows.append(
            {
                "item_id": ids[i],
                "lang": language.code,
                "verdict_ab": ab,
                "verdict_ba": ba,
                "outcome": outcome,
                "score": {"win": 1.0, "tie": 0.5, "loss": 0.0}[outcome],
                "judge_ab": raw_ab,
                "judge_ba": raw_ba,
            }
        )
    unreadable = sum((r["verdict_ab"] is None) + (r["verdict_ba"] is None) for r in rows)
    if unreadable:
        log.warning("judge_pairs: %d of %d judge answers had no readable verdict (counted as ties).", unreadable, 2 * n)
    verdicts: pd.DataFrame = pd.DataFrame(  # annotated: pandas-stubs' Self is Any under python 3.10
        rows, columns=["item_id", "lang", "verdict_ab", "verdict_ba", "outcome", "score", "judge_ab", "judge_ba"]
    )
    return verdicts


def _instruction(row: Mapping[str, Any]) -> str:
    extra = row.get("extra")
    if isinstance(extra, str) and extra:
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError:
            extra = None
    if isinstance(extra, Mapping) and extra.get("instruction"):
        return str(extra["instruction"])
    return str(row.get("prompt", ""))


def judge_results(
    results: pd.DataFrame,
    judge: Model,
    baseline: str = "fp16",
    *,
    tasks: Sequence[str] | None = ("open_ended",),
    quants: Sequence[str] | None = None,
    template: str = JUDGE_TEMPLATE,
    max_new_tokens: int = 512,
) -> pd.DataFrame:
    """Judge every quantized model's outputs against the baseline's, item by item, from a study's results.

    Args:
        results: the tidy results frame (``mq.read_results(run_dir)``): columns ``quant``, ``task``, ``lang``,
            ``item_id``, ``output`` and ``prompt`` or ``extra`` (the raw instruction is taken from
            ``extra["instruction"]`` when present).
        judge: the judge model (an :class:`OpenAIChatModel`, an HFModel, ...).
        baseline: the baseline's quant label.
        tasks: generation tasks to judge (default ``open_ended``; None: every task whose ``kind`` is ``generate``).
        quants: quantized models to judge (default: every quant but the baseline).

    Returns:
        The rows of :func:`judge_pairs` with ``quant`` and ``task`` added; summarise with :func:`win_rates`.

    Example:
        >>> df = mq.read_results("runs/demo")  # doctest: +SKIP
        >>> judge = OpenAIChatModel("https://api.openai.com", "gpt-4o")  # doctest: +SKIP
        >>> judged = judge_results(df, judge=judge, baseline="fp16")  # doctest: +SKIP
        >>> win_rates(judged)  # doctest: +SKIP
    """
    import pandas as pd

    need = {"quant", "task", "lang", "item_id", "output"}
    missing = need - set(results.columns)
    if missing:
        raise ConfigError(f"judge_results: the results lack columns {sorted(missing)}.")
    frame = results
    if tasks is not None:
        frame = frame[frame["task"].isin(list(tasks))]
    elif "kind" in frame.columns:
        frame = frame[frame["kind"] == "generate"]
    if frame.empty:
        raise DataError(f"judge_results: no rows of tasks {tasks!r} in the results.")
    if baseline not in set(frame["quant"]):
        raise ConfigError(f"judge_results: baseline {baseline!r} not among the quants {sorted(set(frame['quant']))}.")
    quants = [q for q in (quants or sorted(set(frame["quant"]))) if q != baseline]
    parts = []
    for (task, lang), cell in frame.groupby(["task", "lang"], sort=True):
        base = cell[cell["quant"] == baseline].drop_duplicates("item_id").set_index("item_id")
        for quant in quants:
            q = cell[cell["quant"] == quant].drop_duplicates("item_id").set_index("item_id")
            common = [i for i in base.index if i in q.index]
            if not common:
                continue
            if len(common) < len(base) or len(common) < len(q):
                log.warning("judge_results: %s/%s/%s: %d items paired with the baseline (baseline %d, quant %d).",
                            quant, task, lang, len(common), len(base), len(q))
            prompts = [_instruction(base.loc[i].to_dict()) for i in common]
            judged = judge_pairs(
                base.loc[common, "output"].astype(str).tolist(),
                q.loc[common, "output"].astype(str).tolist(),
                prompts,
                judge,
                str(lang),
                item_ids=[str(i) for i in common],
                template=template,
                max_new_tokens=max_new_tokens,
            )
            judged.insert(0, "task", str(task))
            judged.insert(0, "quant", quant)
            parts.append(judged)
    if not parts:
        raise DataError(f"judge_results: no quantized outputs paired with baseline {baseline!r}.")
    return pd.concat(parts, ignore_index=True)


def win_rates(judged: pd.DataFrame, by: Sequence[str] = ("quant", "task", "lang")) -> pd.DataFrame:
    """Shares of wins, ties and losses of the quantized model, and its win rate counting a tie as half a win.

    Returns:
        One row per group: ``n``, ``win``, ``tie``, ``loss`` (fractions), ``win_rate`` = win + tie / 2.

    Example:
        >>> import pandas as pd
        >>> verdicts = pd.DataFrame({"quant": "w4", "outcome": ["win", "tie", "loss", "loss"]})
        >>> win_rates(verdicts, by=["quant"]).round(3).values.tolist()
        [['w4', 4, 0.25, 0.25, 0.5, 0.375]]
    """
    import pandas as pd

    by = [c for c in by if c in judged.columns]
    rows = []
    groups = judged.groupby(by, sort=True) if by else [((), judged)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        n = len(g)
        counts = g["outcome"].value_counts()
        win, tie, loss = (float(counts.get(k, 0)) / n for k in ("win", "tie", "loss"))
        keys = dict(zip(by, key, strict=True))
        rows.append({**keys, "n": n, "win": win, "tie": tie, "loss": loss, "win_rate": win + tie / 2})
    # Annotated: pandas-stubs' Self is Any under python 3.10.
    rates: pd.DataFrame = pd.DataFrame(rows, columns=[*by, "n", "win", "tie", "loss", "win_rate"])
    return rates


# ----- an OpenAI-compatible judge -----------------------------------------------------------------------------------
class OpenAIChatModel:
    """A chat model behind an OpenAI-compatible HTTP endpoint (OpenAI, vLLM, llama.cpp server, ...), as a judge.

    Only :meth:`generate` is available (a chat endpoint gives no log-likelihoods). Each request becomes one POST to
    ``/v1/chat/completions`` with the request's context as the user message. Standard library only (urllib).

    Args:
        url: the server (``https://api.openai.com``, ``http://127.0.0.1:8000``; ``/v1`` or the full
            ``/v1/chat/completions`` path may be included).
        model: the model name the server knows.
        api_key_env: environment variable holding the API key (sent as a Bearer token; read at each call and never
            stored or logged); None for a server without authentication.
        timeout: seconds per HTTP request.
        max_retries: retries on 429 / 5xx / connection errors, with exponential back-off.
        system: an optional system message.

    Example:
        >>> judge = OpenAIChatModel("http://127.0.0.1:8000", "my-judge", api_key_env=None)
        >>> judge.endpoint
        'http://127.0.0.1:8000/v1/chat/completions'
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        *,
        timeout: float = 120.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        system: str | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"OpenAIChatModel: url {url!r} must start with http:// or https://.")
        from mlquant.engines.openai import endpoint_url

        self.endpoint = endpoint_url(url, "chat/completions")
        self.model = model
        self.name = f"openai:{model}"
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.system = system
        self.calls = 0

    def __repr__(self) -> str:
        return f"OpenAIChatModel({self.endpoint!r}, {self.model!r}, api_key_env={self.api_key_env!r})"

    def fingerprint(self) -> str:
        blob = json.dumps({"endpoint": self.endpoint, "model": self.model, "system": self.system}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def signature(self) -> str:
        return f"model:{self.model}@{self.endpoint}"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ConfigError(
                    f"OpenAIChatModel: the environment variable {self.api_key_env} holding the API key is not set "
                    "(use api_key_env=None for a server without authentication)."
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _body(self, req: GenerateRequest) -> dict[str, Any]:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": req.context})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": req.max_new_tokens,
            "temperature": req.temperature,
            "seed": req.seed,
        }
        if req.temperature > 0:
            body["top_p"] = req.top_p
        if req.stop:
            body["stop"] = list(req.stop)[:4]  # OpenAI accepts at most 4 stop sequences
        return body

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = self._headers()
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    reply = json.loads(resp.read().decode("utf-8"))
                if not isinstance(reply, dict):
                    raise ConfigError(f"OpenAIChatModel: unexpected reply from {self.endpoint}: {str(reply)[:300]}")
                return reply
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:300]
                if exc.code in (429, 500, 502, 503, 504) and attempt < self.max_retries:
                    log.warning("OpenAIChatModel: HTTP %d from %s; retrying.", exc.code, self.endpoint)
                    time.sleep(self.backoff * 2**attempt)
                    continue
                raise ConfigError(f"OpenAIChatModel: HTTP {exc.code} from {self.endpoint}: {detail}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt < self.max_retries:
                    log.warning("OpenAIChatModel: %s from %s; retrying.", exc, self.endpoint)
                    time.sleep(self.backoff * 2**attempt)
                    continue
                raise ConfigError(f"OpenAIChatModel: cannot reach {self.endpoint}: {exc}") from None
        raise ConfigError(f"OpenAIChatModel: max_retries={self.max_retries}; expected an integer >= 0 (no request was sent).")

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        """One chat completion per request (sequential), cut at the request's stop sequences."""
        out = []
        for req in requests:
            self.calls += 1
            reply = self._post(self._body(req))
            try:
                text = reply["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                raise ConfigError(f"OpenAIChatModel: unexpected reply from {self.endpoint}: {str(reply)[:300]}") from None
            out.append(cut_at_stop(str(text), req.stop))
        return out

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        raise ConfigError("OpenAIChatModel: a chat endpoint gives no log-likelihoods; use it for generation (a judge).")

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingResult]:
        raise ConfigError("OpenAIChatModel: a chat endpoint gives no log-likelihoods; use it for generation (a judge).")
