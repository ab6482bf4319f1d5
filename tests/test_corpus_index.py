"""The corpus index (common/corpus_index.py): built once and reused, rebuilt when a source changes, built by one
process when several start at once, the same samples as an index built in memory, and an embedding cache that
finds texts by hash yet never confuses two texts whose hashes are equal."""
import csv
import multiprocessing
import os
import pickle
import time

import numpy as np
import pytest
import torch

import common.corpus_index as corpus_index
from common.corpus_index import text_hashes
from common.data import CsvPairs
from common import embedder as embedder_module
from common.embedder import EmbeddingCache, TextSource


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "short", "long"])
        writer.writerows(rows)


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "img.png").write_bytes(b"")  # existence is all the index records of an image
    rows = [["img.png", f"short {i}", f"a longer caption number {i}" if i % 3 else ""] for i in range(40)]
    write_csv(tmp_path / "pairs.csv", rows)
    return tmp_path / "pairs.csv"


def open_csv(csv_file, index_dir):
    return CsvPairs(str(csv_file), None, caption_keys=["short", "long"], index_dir=str(index_dir) if index_dir else "")


def test_the_index_on_disk_holds_the_same_samples_as_one_built_in_memory(corpus, tmp_path):
    on_disk, in_memory = open_csv(corpus, tmp_path / "index"), open_csv(corpus, None)
    assert on_disk.index.folder is not None and in_memory.index.folder is None
    assert on_disk.captions_per_image == in_memory.captions_per_image
    assert on_disk.captions_per_image[1] == ["short 1", "a longer caption number 1"]
    assert on_disk.captions_per_image[3] == ["short 3"]  # the empty long caption is dropped
    assert on_disk.image_paths == in_memory.image_paths == [str(corpus.parent / "img.png")] * 40
    for epoch in (0, 1):
        on_disk.set_epoch(epoch), in_memory.set_epoch(epoch)
        assert [on_disk.draw_caption(i) for i in range(40)] == [in_memory.draw_caption(i) for i in range(40)]
    train, held_out = on_disk.holdout(0.25, seed=42)
    assert sorted(train.captions + held_out.captions) == sorted(on_disk.captions)
    assert np.array_equal(train.caption_hashes(), text_hashes(train.captions))
    assert torch.equal(held_out.text_to_image, torch.repeat_interleave(
        torch.arange(len(held_out)), torch.tensor([len(c) for c in held_out.captions_per_image])))


def test_a_dataset_pickles_as_the_folder_of_its_index_not_its_arrays(corpus, tmp_path):
    dataset = open_csv(corpus, tmp_path / "index")
    copy = pickle.loads(pickle.dumps(dataset.index))  # what a spawned DataLoader worker receives
    assert len(pickle.dumps(dataset.index)) < 300
    assert [copy.captions[i] for i in range(5)] == [dataset.index.captions[i] for i in range(5)]


def test_the_index_is_reused_until_its_csv_changes_or_is_truncated(corpus, tmp_path, monkeypatch):
    first = open_csv(corpus, tmp_path / "index")
    folder = first.index.folder

    def no_build(*args):
        raise AssertionError("indexed again")

    monkeypatch.setattr(corpus_index.IndexBuilder, "add", no_build)
    assert open_csv(corpus, tmp_path / "index").captions == first.captions  # reused: nothing is read again
    monkeypatch.undo()

    text = corpus.read_text().replace("short 7,", "edited seven,")
    corpus.write_text(text)
    edited = open_csv(corpus, tmp_path / "index")
    assert edited.index.folder == folder and "edited seven" in edited.captions and "short 7" not in edited.captions
    corpus.write_text("".join(text.splitlines(keepends=True)[:11]))  # truncated to its first 10 rows
    assert len(open_csv(corpus, tmp_path / "index")) == 10
    assert not [p for p in (tmp_path / "index").iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_a_failed_build_leaves_no_index_behind(corpus, tmp_path):
    corpus.write_text("filepath,short,long\nimg.png,,\n")  # a row with no caption: an error while indexing
    with pytest.raises(ValueError, match="1 data row.*no non-empty caption.*row 2"):
        open_csv(corpus, tmp_path / "index")
    assert [p.name for p in (tmp_path / "index").iterdir() if not p.name.endswith(".lock")] == []


def _open_in_another_process(csv_file, index_dir, log):
    def slow_build(self, image, captions, location=None, original=corpus_index.IndexBuilder.add):
        if self.num_samples == 0:
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
            time.sleep(1.0)  # long enough for the other process to arrive while this one builds
        return original(self, image, captions, location)

    corpus_index.IndexBuilder.add = slow_build
    dataset = open_csv(csv_file, index_dir)
    with open(log, "a") as f:
        f.write(f"opened {len(dataset)}\n")


def test_two_ranks_starting_at_once_build_the_index_once(corpus, tmp_path):
    log = tmp_path / "builds.log"
    context = multiprocessing.get_context("fork")
    ranks = [context.Process(target=_open_in_another_process, args=(corpus, tmp_path / "index", log))
             for _ in range(2)]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join(60)
    lines = log.read_text().splitlines()
    assert sorted(line for line in lines if line.startswith("opened")) == ["opened 40", "opened 40"]
    assert len([line for line in lines if not line.startswith("opened")]) == 1  # one build, by one process


def test_the_cache_tells_apart_texts_whose_hash_keys_are_equal(tmp_path, monkeypatch):
    def colliding(texts, real=corpus_index.text_hashes):  # the sorted key collides for nearly every pair
        hashes = real(texts).copy()
        hashes[:, 0] = [len(text) % 2 for text in texts]
        return hashes

    monkeypatch.setattr(embedder_module, "text_hashes", colliding)
    texts = [f"caption {i}" for i in range(12)] + ["a", "bb"]
    vectors = {t: torch.tensor([float(i), float(len(t))]) for i, t in enumerate(texts)}
    cache = EmbeddingCache(tmp_path, "stub, dim 2")
    assert cache.fill(texts + texts[:4], lambda batch: torch.stack([vectors[t] for t in batch]), batch_size=3,
                      shard_size=5, show_progress=False) == len(texts)  # each distinct text once, none merged
    reopened = EmbeddingCache(tmp_path, "stub, dim 2")
    query = texts[::-1] + texts[:3]
    torch.testing.assert_close(reopened.lookup(query), torch.stack([vectors[t] for t in query]))
    assert "caption 99" not in reopened and "caption 3" in reopened


def test_the_fill_reads_a_corpus_by_hash_and_resumes_where_it_stopped(corpus, tmp_path):
    dataset = open_csv(corpus, tmp_path / "index")
    source = TextSource.of_dataset(dataset)
    distinct = sorted(set(dataset.captions))
    calls = []

    def embed(batch):
        calls.append(list(batch))
        if len(calls) == 3:
            raise RuntimeError("killed")
        return torch.tensor([[float(len(t)), 1.0] for t in batch])

    cache = EmbeddingCache(tmp_path / "cache", "stub, dim 2")
    with pytest.raises(RuntimeError, match="killed"):
        cache.fill_missing([source], embed, batch_size=4, shard_size=8, show_progress=False)
    assert len(EmbeddingCache(tmp_path / "cache", "stub, dim 2")) == 8  # the first shard is kept
    (tmp_path / "cache" / "shard-00001.tmp-99999").mkdir()  # what a fill killed with SIGKILL mid-write leaves
    resumed = EmbeddingCache(tmp_path / "cache", "stub, dim 2")
    assert resumed.fill_missing([source], embed, batch_size=4, shard_size=8, show_progress=False) == len(distinct) - 8
    assert sorted(t for batch in calls[3:] for t in batch) == sorted(set(distinct) - set(calls[0] + calls[1]))
    torch.testing.assert_close(resumed.lookup(distinct), torch.tensor([[float(len(t)), 1.0] for t in distinct]))
    assert resumed.missing([source]) == [] and (resumed.positions(dataset.caption_hashes()) >= 0).all()
    assert not list((tmp_path / "cache").glob("*.tmp-*"))
