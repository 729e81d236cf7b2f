"""HFModel: log-likelihoods equal a plain full-sequence computation, whatever the batch size; rolling and generate."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from conftest import make_tiny

from mlquant.models import FakeModel
from mlquant.requests import GenerateRequest, LoglikelihoodRequest, RollingRequest

CONTEXTS = [
    "Question: What is the capital of France?\nAnswer:",
    "日本の首都は",
    "A much longer context that spans well beyond the sliding window of the tiny Gemma model, twice over.",
    "x",
]
CONTINUATIONS = [" Paris", " London is big", "東京", " Berlin", "!"]


def requests() -> list[LoglikelihoodRequest]:
    return [LoglikelihoodRequest(c, k) for c in CONTEXTS for k in CONTINUATIONS]


def full_sequence_logprob(model, req: LoglikelihoodRequest) -> float:
    """Reference: one unbatched forward pass over context + continuation, full logits, log-softmax, sum."""
    ctx, cont = model.encode_pair(req.context, req.continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        lp = torch.log_softmax(model.torch_model(input_ids=ids).logits.double(), dim=-1)[0]
    return sum(float(lp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))


def test_import_does_not_import_torch() -> None:
    code = "import sys, mlquant as mq; mq.get_language('ja'); mq.QuantSpec.parse('rtn-w4g128'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_batch_sizes_agree_with_full_sequence(arch: str) -> None:
    reqs = requests()
    results = {}
    model = make_tiny(arch)
    for bs in (1, 4, 16):
        model.batch_size = bs
        results[bs] = model.loglikelihood(reqs)
    reference = [full_sequence_logprob(model, r) for r in reqs]
    for bs, res in results.items():
        assert [r.n_tokens for r in res] == [r.n_tokens for r in results[1]]
        for r, ref in zip(res, reference):
            assert abs(r.logprob - ref) < 1e-4, (bs, r.logprob, ref)
    # identical predictions (argmax over the options of each context) for every batch size
    for bs in (4, 16):
        for i in range(len(CONTEXTS)):
            block = slice(i * len(CONTINUATIONS), (i + 1) * len(CONTINUATIONS))
            pick = lambda rs: max(range(len(CONTINUATIONS)), key=lambda k: rs[block][k].logprob)  # noqa: E731
            assert pick(results[bs]) == pick(results[1])


def test_shared_context_runs_once_per_batch(tiny_llama) -> None:
    tiny_llama.batch_size = 16
    tiny_llama.loglikelihood([LoglikelihoodRequest(CONTEXTS[0], k) for k in CONTINUATIONS])
    # one pass over the shared context, one over all five continuations
    assert tiny_llama.n_forward == 2


def test_is_greedy_matches_argmax(tiny_llama) -> None:
    # Make "A" the argmax after "Hello" deterministically: every LM-head row 0 except A's, set to the last hidden state.
    ctx = "Hello"
    ids = torch.tensor([tiny_llama.encode(ctx)])
    a_id = tiny_llama.tokenizer("A", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        hidden = tiny_llama.torch_model.model(input_ids=ids).last_hidden_state[0, -1]
        head = tiny_llama.torch_model.lm_head.weight
        head.zero_()
        head[a_id] = hidden
    res = tiny_llama.loglikelihood([LoglikelihoodRequest(ctx, "A"), LoglikelihoodRequest(ctx, "B")])
    assert res[0].is_greedy and not res[1].is_greedy


def test_rolling_equals_full_sequence(tiny_gemma3) -> None:
    text = "The capital of France is Paris. 東京は日本の首都です。"
    res = tiny_gemma3.loglikelihood_rolling([RollingRequest(text), RollingRequest("short")])
    ids = tiny_gemma3.encode(text)
    with torch.no_grad():
        lp = torch.log_softmax(tiny_gemma3.torch_model(input_ids=torch.tensor([ids])).logits.double(), -1)[0]
    ref = sum(float(lp[i, ids[i + 1]]) for i in range(len(ids) - 1))
    assert abs(res[0].logprob - ref) < 1e-4
    assert res[0].n_bytes == len(text.encode("utf-8"))
    assert res[0].bits_per_byte == pytest.approx(-ref / math.log(2) / len(text.encode("utf-8")), rel=1e-6)


def test_generate_is_greedy_and_cut_at_stop(tiny_llama) -> None:
    reqs = [GenerateRequest("Hello", max_new_tokens=12), GenerateRequest("日本", max_new_tokens=12)]
    out = tiny_llama.generate(reqs)
    # greedy: the same as a manual argmax loop
    ids = tiny_llama.encode("Hello")
    for _ in range(12):
        with torch.no_grad():
            ids.append(int(tiny_llama.torch_model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    manual = tiny_llama.tokenizer.decode(ids[-12:], skip_special_tokens=True)
    assert out[0] == manual
    stop = manual[3:5]
    cut = tiny_llama.generate([GenerateRequest("Hello", stop=(stop,), max_new_tokens=12)])[0]
    assert cut == manual[: manual.find(stop)]


def test_fingerprint_covers_quant_and_revision() -> None:
    a, b = make_tiny("llama", seed=0), make_tiny("llama", seed=1)
    assert a.fingerprint() != b.fingerprint()  # revision differs
    from mlquant.quantize import quantize

    assert quantize(a, "rtn-w8").fingerprint() != a.fingerprint()


def test_fake_model_counts_calls() -> None:
    m = FakeModel(loglikelihood=lambda c, k: -len(k))
    res = m.loglikelihood([LoglikelihoodRequest("a", "bb"), LoglikelihoodRequest("a", "c")])
    assert [r.logprob for r in res] == [-2.0, -1.0]
    assert m.calls == 1 and m.requests_seen == 2


@pytest.mark.slow
def test_gemma_tokenizer_from_gguf(gemma) -> None:
    assert gemma.tokenizer("The capital of France is Paris.")["input_ids"] == [2, 818, 5279, 529, 7001, 563, 9079, 236761]


@pytest.mark.slow
def test_gemma_cached_tokenizer_matches_gguf_on_flores(gemma) -> None:
    import json
    import os
    from pathlib import Path

    from transformers import AutoTokenizer

    from mlquant._loading import default_model_source

    src = default_model_source()
    gguf_tok = AutoTokenizer.from_pretrained(src.path, gguf_file=src.gguf_file)
    folder = Path(os.environ["MLQUANT_DATA_DIR"]) / "flores200" / "devtest"
    texts = [json.loads(line)["text"] for f in sorted(folder.glob("*.jsonl")) for line in f.open().readlines()[:5]]
    assert [gemma.tokenizer(t)["input_ids"] for t in texts] == [gguf_tok(t)["input_ids"] for t in texts]


@pytest.mark.slow
def test_gemma_bits_per_byte_is_sane(gemma) -> None:
    import json
    import os
    from pathlib import Path

    rows = Path(os.environ["MLQUANT_DATA_DIR"], "flores200", "devtest", "en.jsonl").read_text().splitlines()[:20]
    res = gemma.loglikelihood_rolling([RollingRequest(json.loads(r)["text"]) for r in rows])
    bpb = -sum(r.logprob for r in res) / math.log(2) / sum(r.n_bytes for r in res)
    assert 0.5 < bpb < 2.0  # ~1.1 with the right tokenizer; a broken tokenizer gives ~13


@pytest.mark.slow
def test_gemma_batch_sizes_agree(gemma) -> None:
    reqs = requests()
    ref = [full_sequence_logprob(gemma, r) for r in reqs]
    for bs in (1, 4, 16):
        gemma.batch_size = bs
        for r, x in zip(gemma.loglikelihood(reqs), ref):
            assert abs(r.logprob - x) < 1e-3
    gemma.batch_size = 16


def test_encode_pair_keeps_every_character_of_a_continuation_merged_across_the_boundary() -> None:
    """Where the tokenizer merges the context's end with the continuation's start (zh without a space), the
    continuation is scored whole, tokenized alone, after the context's own tokens (lm-eval would drop its first
    characters: see bench/README.md, bench/choice.py)."""
    from mlquant.models import HFModel

    vocab = {"所以": 1, "以我": 2, "所": 3, "我": 4, "走": 5}

    class MergingTokenizer:
        def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
            ids, i = [], 0
            while i < len(text):
                two = text[i : i + 2]
                if two in vocab and not (two == "所以" and text[i + 2 : i + 3] == "我"):
                    ids.append(vocab[two])
                    i += 2
                elif two == "所以" or text[i] == "所":
                    ids.append(vocab["所"])
                    i += 1
                else:
                    ids.append(vocab[text[i]])
                    i += 1
            return {"input_ids": ids}

    model = HFModel.__new__(HFModel)
    model.tokenizer = MergingTokenizer()
    model.prefix_ids = lambda: [0]  # BOS
    assert model.encode("所以我走") == [0, 3, 2, 5]  # the merge: 所 + 以我 + 走
    ctx, cont = model.encode_pair("所以", "我走")
    assert ctx == [0, 1] and cont == [4, 5]  # context's own tokens, then 我 走: nothing of the option is lost
    ctx, cont = model.encode_pair("走", "所以")  # no merge: a plain split of the whole
    assert (ctx, cont) == ([0, 5], [1])


def test_a_cache_folder_published_by_another_process_first_is_kept(tmp_path) -> None:
    """Two test workers (or users) filling the float cache at once: the second one's rename loses, quietly."""
    from mlquant._loading import _publish

    first, second, target = tmp_path / "a", tmp_path / "b", tmp_path / "model"
    for folder, text in ((first, "first"), (second, "second")):
        folder.mkdir()
        (folder / "config.json").write_text(text)
    _publish(first, target)
    _publish(second, target)
    assert (target / "config.json").read_text() == "first"
    with pytest.raises(OSError):
        _publish(tmp_path / "missing", tmp_path / "nowhere")
