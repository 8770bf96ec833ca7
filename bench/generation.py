"""Greedy generation with SmolLM2-135M-Instruct, side by side in one run, on the same weights and thread count:

    onnx fp32        our backend (adapters/backends/onnx_chat.py) on the optimum-onnx graph
    onnx int4        our backend on the fused int4 graph carrying the GGUF's own Q4_1 blocks
    pytorch fp32     transformers, the same checkpoint (a plain KV-cache loop, no generate() overhead)
    llama.cpp Q4_1   llama-cpp-python on the GGUF itself (when installed: see docs/models.md for the wheel)
    genai int4       onnxruntime-genai's own runtime on our int4 folder (when onnxruntime_genai is installed)

Engines are interleaved round by round and the median is reported, because this machine is shared and noisy: read the
ratios. Decode speed is tokens after the first / time after the first; TTFT is prompt processing + first token.
Also checks that onnx fp32 picks exactly PyTorch's greedy tokens. Usage: python bench/generation.py [--tokens N]
[--rounds R] [--threads T]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from scaigrid.adapters.backends import manifest
from scaigrid.adapters.backends import prepare as prep
from scaigrid.adapters.backends.onnx_chat import OnnxChatModel

PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]


def ours(model: OnnxChatModel, ids: list[int], tokens: int):
    def run():
        gen = model.generate(ids, max_tokens=tokens, temperature=0)
        started = time.perf_counter()
        first = None
        for _ in gen:
            first = first or time.perf_counter()
        return gen.token_ids, started, first or time.perf_counter(), time.perf_counter()
    return run


def pytorch(hf_dir: Path, ids: list[int], tokens: int, threads: int):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()

    @torch.inference_mode()
    def run():
        started = time.perf_counter()
        out = model(torch.tensor([ids]), use_cache=True)
        past, produced = out.past_key_values, []
        token = int(out.logits[0, -1].argmax())
        first = time.perf_counter()
        while True:
            produced.append(token)
            if token in (0, 2) or len(produced) >= tokens:
                break
            out = model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
            past, token = out.past_key_values, int(out.logits[0, -1].argmax())
        return produced, started, first, time.perf_counter()
    return run


def llama_cpp(gguf: Path, ids: list[int], tokens: int, threads: int):
    from llama_cpp import Llama

    model = Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=2048, verbose=False)

    def run():
        model.reset()  # else generate() reuses the previous round's prompt (prefix match) and TTFT means nothing
        started, produced, first = time.perf_counter(), [], None
        for token in model.generate(ids, temp=0.0, top_k=1, reset=True):
            first = first or time.perf_counter()
            produced.append(token)
            if token in (0, 2) or len(produced) >= tokens:
                break
        return produced, started, first, time.perf_counter()
    return run


def genai(int4_dir: Path, ids: list[int], tokens: int, threads: int, keep: list):
    import onnxruntime_genai as og

    # a copy of genai_config.json that pins the thread count; the graph files are linked, not copied
    folder = Path(tempfile.mkdtemp(prefix="scaigrid-genai-"))
    keep.append(folder)
    config = json.loads((int4_dir / "genai_config.json").read_text())
    config["model"]["decoder"]["session_options"].update(intra_op_num_threads=threads, inter_op_num_threads=1)
    (folder / "genai_config.json").write_text(json.dumps(config))
    for name in ("model.onnx", "model.onnx.data"):
        (folder / name).symlink_to(int4_dir / name)
    model = og.Model(str(folder))

    def run():
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + tokens, do_sample=False)
        generator = og.Generator(model, params)
        started, produced, first = time.perf_counter(), [], None
        generator.append_tokens(ids)
        while not generator.is_done() and len(produced) < tokens:
            generator.generate_next_token()
            produced.append(int(generator.get_next_tokens()[0]))
            first = first or time.perf_counter()
        return produced, started, first, time.perf_counter()
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 2, 4))
    args = parser.parse_args()

    root = prep.models_dir()
    try:
        prep.prepare([prep.CHAT_ID], root=root, progress=False, log=lambda line: None)
    except prep.ExportExtraMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    model_dir = root / prep.CHAT_ID
    engines = {variant: OnnxChatModel(model_dir, variant=variant, providers=["CPUExecutionProvider"],
                                      threads=args.threads) for variant in ("fp32", "int4")}
    ids = engines["fp32"].encode_chat(PROMPT)
    runs = {f"onnx {v}": ours(m, ids, args.tokens) for v, m in engines.items()}
    if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
        runs["pytorch fp32"] = pytorch(prep.hf_checkpoint(root), ids, args.tokens, args.threads)
    if importlib.util.find_spec("llama_cpp"):
        runs["llama.cpp Q4_1"] = llama_cpp(prep.source_files(prep.SMOLLM2, root) / prep.GGUF_FILE, ids,
                                           args.tokens, args.threads)
    temp_dirs: list[Path] = []
    if importlib.util.find_spec("onnxruntime_genai"):
        runs["genai int4"] = genai(model_dir / "int4", ids, args.tokens, args.threads, temp_dirs)

    speed = {name: [] for name in runs}
    ttft = {name: [] for name in runs}
    produced = {}
    for run in runs.values():  # warm-up: first-run allocations stay out of the numbers
        run()
    for _ in range(args.rounds):
        for name, run in runs.items():
            tokens, started, first, ended = run()
            produced[name] = tokens
            speed[name].append((len(tokens) - 1) / (ended - first))
            ttft[name].append((first - started) * 1000)
    for folder in temp_dirs:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()

    data = manifest.read(model_dir)
    print(f"\nSmolLM2-135M-Instruct, greedy, prompt {len(ids)} tokens, up to {args.tokens} new, "
          f"{args.threads} threads, median of {args.rounds} interleaved rounds (CPU)")
    print(f"{'engine':<16}{'decode tok/s':>14}{'TTFT ms':>10}{'tokens':>8}   all rounds (tok/s)")
    median = {name: statistics.median(values) for name, values in speed.items()}
    for name in runs:
        rounds = " ".join(f"{v:.0f}" for v in speed[name])
        print(f"{name:<16}{median[name]:>14.1f}{statistics.median(ttft[name]):>10.1f}{len(produced[name]):>8}"
              f"   {rounds}")
    print()
    if "pytorch fp32" in produced:
        same = produced["onnx fp32"] == produced["pytorch fp32"]
        print(f"greedy tokens, onnx fp32 vs pytorch fp32: {'identical' if same else 'DIFFERENT'} "
              f"({len(produced['onnx fp32'])} tokens)")
    int4, fp32 = engines["int4"], engines["fp32"]
    agreement = int4.next_token_agreement(fp32, ids + produced["onnx fp32"], start=len(ids))
    print(f"int4 vs fp32 next-token agreement (teacher forced on fp32's answer): {agreement:.1%}")
    if "llama.cpp Q4_1" in produced:
        a, b = produced["onnx int4"], produced["llama.cpp Q4_1"]
        common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        print(f"onnx int4 and llama.cpp Q4_1 greedy tokens: first {common} identical")
    print(f"build checks in the manifest: {data.get('checks')}")
    print()
    targets = [("onnx int4", "pytorch fp32", 2.5), ("onnx fp32", "pytorch fp32", None),
               ("onnx int4", "llama.cpp Q4_1", 0.8), ("genai int4", "onnx int4", None)]
    for mine, theirs, target in targets:
        if mine in median and theirs in median:
            ratio = median[mine] / median[theirs]
            # both engines ran back to back in each round: the per-round ratio shrugs off load that comes and goes
            per_round = statistics.median(a / b for a, b in zip(speed[mine], speed[theirs]))
            verdict = f" (target >= {target}x: {'OK' if ratio >= target else 'MISSED'})" if target else ""
            print(f"{mine} / {theirs}: {ratio:.2f}x, per-round median {per_round:.2f}x{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
