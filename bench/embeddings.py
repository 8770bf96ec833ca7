"""all-MiniLM-L6-v2 embeddings/s, side by side in one run on the same weights and thread count:

    pytorch            sentence-transformers (or, where it is not installed, transformers + mean pooling: the same
                       computation), the reference
    onnx fp32 / int8   our backend (adapters/backends/onnx_embed.py) on the optimum export and its per-channel
                       int8 quantisation

Batches of --batch texts of about --tokens tokens each (random English words, fixed seed). Engines are interleaved
round by round and the median is reported: this machine is shared and noisy, read the ratios. Cosine agreement is
against the PyTorch vectors. Usage: python bench/embeddings.py [--texts N] [--batch B] [--tokens T] [--rounds R]
[--threads T]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from scaigrid.adapters.backends import prepare as prep
from scaigrid.adapters.backends.onnx_embed import OnnxEmbedModel

WORDS = ("time year people way day man thing woman life child world school state family student group country "
         "problem hand part place case week company system program question work government number night point "
         "home water room mother area money story fact month lot right study book eye job word business issue "
         "side kind head house service friend father power hour game line end member law car city community name "
         "president team minute idea kid body information back parent face others level office door health person "
         "art war history party result change morning reason research girl guy moment air teacher force education "
         "quickly never often gateway tenant embedding vector search query answer cloud privacy model request").split()


def texts_of(count: int, tokens: int, tokenizer) -> list[str]:
    rng = np.random.default_rng(0)
    texts = []
    for _ in range(count):
        words = list(rng.choice(WORDS, tokens))
        while len(tokenizer.encode(" ".join(words)).ids) > tokens:  # ~`tokens` with [CLS] and [SEP]
            words.pop()
        texts.append(" ".join(words))
    return texts


def vectors_of(model: OnnxEmbedModel, batch: int):
    return lambda texts: model.embed(texts, batch_size=batch).vectors


def pytorch_engine(src, batch: int, threads: int):
    import torch

    torch.set_num_threads(threads)
    if importlib.util.find_spec("sentence_transformers"):
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(src), device="cpu")
        return "pytorch (sentence-transformers)", lambda texts: model.encode(
            texts, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True)
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(src), AutoModel.from_pretrained(src).eval()

    @torch.inference_mode()
    def run(texts):
        out = []
        for i in range(0, len(texts), batch):
            enc = tokenizer(texts[i:i + batch], padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy())
        return np.concatenate(out)
    return "pytorch (transformers + mean pooling)", run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 2, 4))
    args = parser.parse_args()

    root = prep.models_dir()
    try:
        prep.prepare([prep.EMBED_ID], root=root, progress=False, log=lambda line: None)
    except prep.ExportExtraMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    ours = {variant: OnnxEmbedModel(root / prep.EMBED_ID, variant=variant, providers=["CPUExecutionProvider"],
                                    threads=args.threads) for variant in ("fp32", "int8")}
    texts = texts_of(args.texts, args.tokens, ours["fp32"].tokenizer)
    engines = {f"onnx {v}": vectors_of(m, args.batch) for v, m in ours.items()}
    reference = None
    if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
        reference, run = pytorch_engine(prep.source_files(prep.MINILM, root) / prep.MINILM_DIR, args.batch,
                                        args.threads)
        engines = {reference: run, **engines}

    rates = {name: [] for name in engines}
    vectors = {name: run(texts[:args.batch]) for name, run in engines.items()}  # warm-up
    for _ in range(args.rounds):
        for name, run in engines.items():
            started = time.perf_counter()
            vectors[name] = run(texts)
            rates[name].append(len(texts) / (time.perf_counter() - started))

    count = ours["fp32"].count_tokens(texts)
    print(f"\nall-MiniLM-L6-v2, {len(texts)} texts of {min(count)}-{max(count)} tokens, batch {args.batch}, "
          f"{args.threads} threads, median of {args.rounds} interleaved rounds (CPU)")
    base = reference or "onnx fp32"
    print(f"{'engine':<40}{'embeddings/s':>14}{'x ' + base.split(' (')[0]:>12}{'cos mean':>10}{'cos min':>9}"
          "   all rounds")
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name in engines:
        cosine = (vectors[name] * vectors[base]).sum(1)
        print(f"{name:<40}{median[name]:>14.1f}{median[name] / median[base]:>11.2f}x{cosine.mean():>10.4f}"
              f"{cosine.min():>9.4f}   {' '.join(f'{r:.0f}' for r in rates[name])}")
    if reference:
        for name in ("onnx fp32", "onnx int8"):
            ratio = median[name] / median[reference]
            per_round = statistics.median(a / b for a, b in zip(rates[name], rates[reference]))
            cosine = (vectors[name] * vectors[reference]).sum(1)
            ok = ratio >= 2.5 and cosine.mean() >= 0.99
            print(f"{name}: {ratio:.2f}x PyTorch (per-round median {per_round:.2f}x) at cosine {cosine.mean():.4f} "
                  f"(min {cosine.min():.4f}) "
                  f"(target >= 2.5x at mean cosine >= 0.99: {'OK' if ok else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
