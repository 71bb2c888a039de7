"""Scores each fast answer under the strong model: the mean and lowest
8-token-window logprob of the fast route's answer, teacher-forced after the
item's prompt, on the escalation model. Writes the fast route's eval records
with those two numbers as `confidence.verify_mean_logprob` and
`confidence.verify_min_window_logprob`, which `switchyard calibrate` reads
for a cascade with `signal = "verify_mean"` or `"verify_window_min"`.
Python, not the server's `Engine::score`, because `eval run` does not
record these yet."""

import argparse
import json
import sys

import numpy as np
from llama_cpp import Llama

WINDOW = 8  # as CONFIDENCE_WINDOW in crates/router/src/confidence.rs
MAX_ANSWER_TOKENS = 256


def chatml(messages):
    text = ""
    for m in messages:
        content = m.get("content") or ""
        if not isinstance(content, str):
            content = json.dumps(content)
        text += f"<|im_start|>{m['role']}\n{content}<|im_end|>\n"
    return text + "<|im_start|>assistant\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="the strong model's GGUF")
    ap.add_argument("--dataset", required=True, help="the eval set's items.jsonl")
    ap.add_argument("--records", required=True, help="the fast route's records.jsonl")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    items = {i["id"]: i for i in map(json.loads, filter(str.strip, open(args.dataset)))}
    records = [json.loads(l) for l in open(args.records) if l.strip()]
    llm = Llama(model_path=args.model, n_ctx=4096, logits_all=True, n_threads=2, n_batch=512, verbose=False)
    with open(args.out, "w") as out:
        for n, r in enumerate(records):
            prompt = llm.tokenize(chatml(items[r["item_id"]]["messages"]).encode(), add_bos=False, special=True)[-3000:]
            answer = llm.tokenize(r["output"].encode(), add_bos=False, special=False)[:MAX_ANSWER_TOKENS]
            conf = r.setdefault("confidence", {})
            conf["verify_mean_logprob"] = conf["verify_min_window_logprob"] = None
            if answer:
                llm.reset()
                llm.eval(prompt + answer)
                logits = np.array(llm.scores[len(prompt) - 1 : len(prompt) + len(answer) - 1], dtype=np.float64)
                top = logits.max(axis=1)
                lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
                lp = logits[np.arange(len(answer)), answer] - lse
                w = min(WINDOW, len(lp))
                conf["verify_mean_logprob"] = float(lp.mean())
                conf["verify_min_window_logprob"] = float(min(lp[i : i + w].mean() for i in range(len(lp) - w + 1)))
            out.write(json.dumps(r) + "\n")
            if sys.stderr.isatty():
                print(f"\rscored {n + 1}/{len(records)}", end="", file=sys.stderr, flush=True)
            elif (n + 1) % 50 == 0 or n + 1 == len(records):
                print(f"scored {n + 1}/{len(records)}", file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print(file=sys.stderr)


if __name__ == "__main__":
    main()
