"""The reference side of `benches/perplexity-vs-torch.sh`: WikiText perplexity of a Hugging Face
causal LM with PyTorch + transformers, the work whittle's `evaluate` stage does for
`task: perplexity` (the file tokenized once with special tokens, non-overlapping windows of
SEQLEN, the first LIMIT of them, each scored on its SEQLEN - 1 next tokens, f32, BATCH windows
per forward pass). Prints the perplexity and the wall time of load + score.

Usage: python perplexity.py MODEL_DIR TEXT_FILE SEQLEN LIMIT BATCH THREADS
"""

import math
import sys
import time

start = time.perf_counter()
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

model_dir, text_file, seqlen, limit, batch, threads = sys.argv[1:7]
seqlen, limit, batch, threads = int(seqlen), int(limit), int(batch), int(threads)
torch.set_num_threads(threads)

tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
model.eval()
loaded = time.perf_counter()

# newline="": the file's bytes as they are (WikiText's raw files end lines in \r\n, which text
# mode would turn into \n, and so into other tokens than whittle reads).
with open(text_file, encoding="utf-8", newline="") as f:
    text = f.read()
ids = tok(text, add_special_tokens=True, return_tensors="pt").input_ids[0]
n = min(limit, len(ids) // seqlen)
windows = ids[: n * seqlen].view(n, seqlen)

nll, count = 0.0, 0
with torch.inference_mode():
    for b in range(0, n, batch):
        x = windows[b : b + batch]
        logits = model(x).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        picked = logp.gather(-1, x[:, 1:].unsqueeze(-1)).squeeze(-1)
        nll -= picked.double().sum().item()
        count += picked.numel()
done = time.perf_counter()
print(f"ppl {math.exp(nll / count):.6f} windows {n} seqlen {seqlen}")
print(f"load {loaded - start:.2f} s, score {done - loaded:.2f} s, total {done - start:.2f} s")
