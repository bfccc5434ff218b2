"""Sequential Wanda or SparseGPT on a LLaMA-family model in PyTorch + transformers, the way the
reference scripts run it on one device: every calibration window through block i (hooks collect
each linear layer's inputs), the block's linear layers pruned, the windows run through the pruned
block again to give block i + 1 its inputs. Then perplexity on the evaluation windows.

    python sequential.py MODEL_DIR IDS_JSON METHOD PATTERN

IDS_JSON holds {"calibration": [[ids]...], "evaluation": [[ids]...]} (the windows whittle used,
so both sides do the same work). METHOD is wanda or sparsegpt; PATTERN is 2:4 or a fraction.
Prints the perplexity and the time of each phase. For timing, not a fixture.
"""

import json
import math
import sys
import time

import torch
import transformers


def linears(block):
    return {n: m for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}


def nm_mask(score, n, m):
    rows, cols = score.shape
    groups = score.reshape(rows, cols // m, m)
    idx = torch.topk(groups, n, dim=-1, largest=False)[1]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True)
    return mask.reshape(rows, cols)


def wanda(layer, scaler, pattern):
    w = layer.weight.data
    score = w.abs() * torch.sqrt(scaler.reshape(1, -1))
    if isinstance(pattern, tuple):
        mask = nm_mask(score, *pattern)
    else:
        k = int(w.shape[1] * pattern)
        idx = torch.sort(score, dim=-1, stable=True)[1][:, :k]
        mask = torch.zeros_like(w, dtype=torch.bool).scatter_(1, idx, True)
    w[mask] = 0


def sparsegpt(layer, h, pattern, blocksize=128, percdamp=0.01):
    w = layer.weight.data.clone().float()
    cols = w.shape[1]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += percdamp * torch.mean(torch.diag(h)) * torch.eye(cols)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        d = torch.diag(hinv[i1:i2, i1:i2])
        if isinstance(pattern, tuple):
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
        else:
            score = w1**2 / d.reshape(1, -1) ** 2
            thresh = torch.sort(score.flatten())[0][int(score.numel() * pattern)]
            mask1 = score <= thresh
        for i in range(i2 - i1):
            col = w1[:, i]
            if isinstance(pattern, tuple) and i % pattern[1] == 0:
                n, m = pattern
                score = w1[:, i : i + m] ** 2 / d[i : i + m].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(score, n, dim=1, largest=False)[1], True)
            q = col.clone()
            q[mask1[:, i]] = 0
            q1[:, i] = q
            err = (col - q) / d[i]
            w1[:, i:] -= err.unsqueeze(1) @ hinv[i1 + i, i1 + i : i2].unsqueeze(0)
            err1[:, i] = err
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    layer.weight.data = w.to(layer.weight.dtype)


def main():
    model_dir, ids_json, method, pattern = sys.argv[1:5]
    pattern = tuple(int(v) for v in pattern.split(":")) if ":" in pattern else float(pattern)
    ids = json.load(open(ids_json))
    t0 = time.time()
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    t_load = time.time() - t0
    inner = model.model
    calib = [torch.tensor([w]) for w in ids["calibration"]]
    t0 = time.time()
    with torch.no_grad():
        inps = [inner.embed_tokens(x) for x in calib]
        pos = torch.arange(calib[0].shape[1]).unsqueeze(0)
        rope = inner.rotary_emb(inps[0], pos)
        for block in inner.layers:
            subset = linears(block)
            stats = {}

            def hook(name):
                def add(_, inp, __):
                    x = inp[0].reshape(-1, inp[0].shape[-1]).float()
                    if method == "wanda":
                        s, n = stats.get(name, (0, 0))
                        # the running mean over windows of ||X_j||^2
                        stats[name] = (s * n / (n + 1) + (x**2).sum(0) / (n + 1), n + 1)
                    else:
                        h, n = stats.get(name, (0, 0))
                        h = h * n / (n + 1)
                        x = math.sqrt(2 / (n + 1)) * x
                        stats[name] = (h + x.t() @ x, n + 1)

                return add

            handles = [m.register_forward_hook(hook(n)) for n, m in subset.items()]
            for x in inps:
                block(x, position_embeddings=rope)
            for h in handles:
                h.remove()
            for name, layer in subset.items():
                if method == "wanda":
                    wanda(layer, stats[name][0], pattern)
                else:
                    sparsegpt(layer, stats[name][0], pattern)
            inps = [block(x, position_embeddings=rope) for x in inps]
            inps = [x[0] if isinstance(x, tuple) else x for x in inps]
    t_prune = time.time() - t0
    t0 = time.time()
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in ids["evaluation"]:
            x = torch.tensor([w])
            logits = model(x).logits[0, :-1].float()
            nll += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
            count += x.shape[1] - 1
    t_eval = time.time() - t0
    print(json.dumps({"ppl": math.exp(nll / count), "load_s": t_load, "prune_s": t_prune, "eval_s": t_eval}))


if __name__ == "__main__":
    main()
