"""The LM head at scored positions: ``log_softmax(lm_head(h))`` (lm-eval's and the old path) vs mlquant's blocked head.

For Gemma 3 270M's real head (262,144 x 640, float32) and real hidden states (FLORES devtest sentences through the
model), per number of positions: seconds of each path (best of ``--repeat``) and GFLOP/s of its matrix product; then
the accuracy of each against a float64 log-softmax of the same logits (mean and largest error of log P(token) over
every position, and whether the argmax agrees).

Usage::

    MLQUANT_DATA_DIR=../shared/data python bench/head.py [--positions 16,64,320,1024] [--repeat 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any


def _best(fn: Any, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--positions", default="16,64,320,1024", help="numbers of positions (rows of hidden states)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sentences", type=int, default=24, help="FLORES en devtest sentences for the hidden states")
    args = ap.parse_args(argv)

    import torch

    import mlquant as mq
    from mlquant._head import plain_head, token_logprobs

    torch.set_num_threads(args.threads)
    model = mq.load_model("gemma3-270m")
    parts = plain_head(model.torch_model)
    if parts is None:
        raise SystemExit("the model's LM head is not a plain nn.Linear")
    weight, bias = parts
    flores = mq.get_task("flores_ppl")
    texts = [flores.requests(item, "en")[0].text for item in flores.items("en", limit=args.sentences, seed=0)]
    with torch.inference_mode():
        hidden = torch.cat([model.body()(input_ids=torch.tensor([model.encode(t)])).last_hidden_state[0] for t in texts])
    vocab, dim = weight.shape
    print(f"head {vocab} x {dim} float32; {hidden.shape[0]} hidden states from {len(texts)} FLORES en sentences; "
          f"{args.threads} threads; load {os.getloadavg()[0]:.1f}")

    def old(h: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lp = model.logprobs_at(h)
        return lp.gather(1, t[:, None])[:, 0], lp.argmax(-1) == t

    print(f"{'positions':>9} {'log_softmax s':>14} {'GFLOP/s':>8} {'blocked s':>10} {'GFLOP/s':>8} {'speed-up':>9}")
    for n in [int(x) for x in args.positions.split(",")]:
        h = hidden[torch.arange(n) % hidden.shape[0]].contiguous()
        t = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(n))
        with torch.inference_mode():
            a = _best(lambda: old(h, t), args.repeat)
            b = _best(lambda: token_logprobs(weight, bias, None, h, torch.arange(n), t), args.repeat)
        flop = 2 * n * vocab * dim
        print(f"{n:>9} {a:>14.3f} {flop / a / 1e9:>8.1f} {b:>10.3f} {flop / b / 1e9:>8.1f} {a / b:>8.2f}x")

    with torch.inference_mode():
        targets = torch.randint(0, vocab, (hidden.shape[0],), generator=torch.Generator().manual_seed(0))
        rows = torch.arange(hidden.shape[0])
        errors: dict[str, list[torch.Tensor]] = {"log_softmax float32": [], "blocked": []}
        argmax_same = {k: 0 for k in errors}
        for start in range(0, hidden.shape[0], 128):
            h, t = hidden[start : start + 128], targets[start : start + 128]
            logits64 = torch.nn.functional.linear(h, weight).double()
            ref = torch.log_softmax(logits64, -1)
            ref_t, ref_arg = ref.gather(1, t[:, None])[:, 0], ref.argmax(-1)
            lp_old = model.logprobs_at(h)
            lp_new, greedy_new = token_logprobs(weight, bias, None, h, rows[: h.shape[0]], t)
            errors["log_softmax float32"].append(lp_old.gather(1, t[:, None])[:, 0].double() - ref_t)
            errors["blocked"].append(lp_new - ref_t)
            argmax_same["log_softmax float32"] += int((lp_old.argmax(-1) == ref_arg).sum())
            argmax_same["blocked"] += int((greedy_new == (ref_arg == t)).sum())
    print(f"\naccuracy against float64 log_softmax of the same float32 logits, {hidden.shape[0]} positions:")
    for name, errs in errors.items():
        e = torch.cat(errs)
        print(f"  {name:20} mean error {float(e.mean()):+.2e}  largest |error| {float(e.abs().max()):.2e}  "
              f"argmax/greedy agrees {argmax_same[name]}/{hidden.shape[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
