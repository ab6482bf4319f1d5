"""A caption corpus as arrays on disk, memory-mapped: what a training stage reads by sample index.

A corpus of millions of pairs held as Python strings and lists costs about a kilobyte per caption in every rank
and every DataLoader worker, and a minute per million to build on every start. An index holds the same corpus in
a few flat files, written once by one process and memory-mapped by every reader (their pages are the OS's file
cache, shared by all ranks and workers on a node):

    meta.json              what it was built from (each source's path, size and modification time), its keys and
                           counts; an index whose sources changed is rebuilt, never reused
    images.bin + image_offsets.npy       each sample's image path (csv, coco) or webdataset key, UTF-8
    image_locations.npy    webdataset: [shard number, byte offset, byte size] of each sample's image
    captions.bin + caption_offsets.npy   every caption, UTF-8
    caption_ranges.npy     sample i's captions are rows caption_ranges[i]:caption_ranges[i + 1]
    caption_hashes.npy     text_hashes of every caption [M, 2]: how the embedding cache finds its vector
    missing_images.npy     csv, coco: the samples whose image file did not exist when the index was built

`open_index` returns the index of a corpus, building it under a file lock when it is missing or stale;
`build_index_in_memory` builds the same arrays without writing them (small evaluation sets).
"""
import contextlib
import fcntl
import glob
import hashlib
import io
import json
import os
import shutil
from array import array

import numpy as np

INDEX_FORMAT = 1
STRING_FILES = {"images": ("images.bin", "image_offsets.npy"), "captions": ("captions.bin", "caption_offsets.npy")}
ARRAY_FILES = ("image_locations", "caption_ranges", "caption_hashes", "missing_images")


def text_digests(texts):
    """The 128-bit BLAKE2b digest of each text, concatenated: 16 bytes a text."""
    return b"".join(hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest() for text in texts)


def text_hashes(texts):
    """The 128-bit BLAKE2b hash of each text as a [N, 2] uint64 array: column 0 is the key an embedding cache sorts
    and searches by, column 1 tells apart texts whose keys are equal. Two distinct texts with the same 128 bits are
    not expected at any corpus size (about 1e-23 for 60M texts)."""
    return np.frombuffer(text_digests(texts), dtype="<u8").reshape(-1, 2).astype(np.uint64)


def unique_hash_rows(hashes):
    """Positions of the first occurrence of each distinct row of `hashes` [N, 2], in the order of the hashes."""
    order = np.lexsort((hashes[:, 1], hashes[:, 0]))
    ordered = hashes[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
    return order[first]


class PackedStrings:
    """Strings stored as one UTF-8 blob and int64 offsets: string i is blob[offsets[i]:offsets[i + 1]]."""

    def __init__(self, blob, offsets):
        self.blob, self.offsets = blob, offsets

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, i):
        return self.blob[int(self.offsets[i]):int(self.offsets[i + 1])].tobytes().decode("utf-8")


class _StringWriter:
    """Appends strings to a blob (a file, or memory) and records their offsets in a compact array."""

    def __init__(self, path=None):
        self.file = open(path, "wb") if path else io.BytesIO()
        self.offsets = array("q", [0])

    def add(self, text):
        data = text.encode("utf-8")
        self.file.write(data)
        self.offsets.append(self.offsets[-1] + len(data))

    def close(self):
        blob = None if isinstance(self.file, io.BufferedWriter) else np.frombuffer(self.file.getvalue(), np.uint8)
        self.file.close()
        return blob, np.frombuffer(self.offsets, dtype=np.int64)


class CorpusIndex:
    """The arrays of one corpus (module docstring). Picklable: a copy in another process maps the files again."""

    def __init__(self, meta, arrays, folder=None):
        self.meta, self.folder = meta, folder
        self.images, self.captions = arrays["images"], arrays["captions"]
        self.image_locations = arrays.get("image_locations")
        self.caption_ranges, self.caption_hashes = arrays["caption_ranges"], arrays["caption_hashes"]
        self.missing_images = arrays.get("missing_images")

    @classmethod
    def load(cls, folder):
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        arrays = {}
        for name, (blob, offsets) in STRING_FILES.items():
            blob_path = os.path.join(folder, blob)
            data = (np.memmap(blob_path, dtype=np.uint8, mode="r") if os.path.getsize(blob_path)
                    else np.zeros(0, np.uint8))  # a zero-length file cannot be mapped
            arrays[name] = PackedStrings(data, np.load(os.path.join(folder, offsets), mmap_mode="r"))
        for name in ARRAY_FILES:
            path = os.path.join(folder, name + ".npy")
            if os.path.exists(path):
                arrays[name] = np.load(path, mmap_mode="r")
        return cls(meta, arrays, folder)

    def __getstate__(self):  # a DataLoader worker started by spawn maps the files again instead of copying them
        if self.folder is None:
            return self.__dict__
        return {"folder": self.folder}

    def __setstate__(self, state):
        if "meta" in state:
            self.__dict__.update(state)
        else:
            self.__dict__.update(CorpusIndex.load(state["folder"]).__dict__)

    @property
    def num_samples(self):
        return len(self.caption_ranges) - 1

    def captions_of(self, sample):
        return [self.captions[row] for row in range(int(self.caption_ranges[sample]),
                                                     int(self.caption_ranges[sample + 1]))]

    def caption_count(self, sample):
        return int(self.caption_ranges[sample + 1] - self.caption_ranges[sample])

    def caption_rows(self, samples):
        """The caption rows of `samples` (an int array), in sample order: one vectorised gather."""
        starts, stops = self.caption_ranges[samples], self.caption_ranges[np.asarray(samples) + 1]
        counts = stops - starts
        if counts.sum() == 0:
            return np.zeros(0, dtype=np.int64)
        firsts = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        return firsts + np.arange(counts.sum())


# --- building -----------------------------------------------------------------------------------------------------
class IndexBuilder:
    """Collects samples one at a time: add(image name, captions, location=None)."""

    def __init__(self, folder=None):
        self.folder = folder
        path = (lambda name: os.path.join(folder, name)) if folder else (lambda name: None)
        self.images = _StringWriter(path(STRING_FILES["images"][0]))
        self.captions = _StringWriter(path(STRING_FILES["captions"][0]))
        self.caption_ranges, self.caption_hashes = array("q", [0]), array("Q")  # hashes: the digests' raw bytes
        self.locations, self.missing = array("q"), array("q")

    def add(self, image, captions, location=None):
        self.images.add(image)
        for caption in captions:
            self.captions.add(caption)
        self.caption_hashes.frombytes(text_digests(captions))  # as text_hashes, without an array per sample
        self.caption_ranges.append(self.caption_ranges[-1] + len(captions))
        if location is not None:
            self.locations.extend(location)

    def image_missing(self, sample):
        self.missing.append(sample)

    @property
    def num_samples(self):
        return len(self.caption_ranges) - 1

    def finish(self, meta):
        """-> CorpusIndex; with a folder, the arrays are written there and mapped back."""
        arrays = {}
        for name in STRING_FILES:
            arrays[name] = getattr(self, name).close()
        arrays["caption_ranges"] = np.frombuffer(self.caption_ranges, dtype=np.int64)
        arrays["caption_hashes"] = np.frombuffer(self.caption_hashes, dtype="<u8").reshape(-1, 2).astype(np.uint64)
        arrays["missing_images"] = np.frombuffer(self.missing, dtype=np.int64)
        if self.locations:
            arrays["image_locations"] = np.frombuffer(self.locations, dtype=np.int64).reshape(-1, 3)
        meta = {**meta, "format": INDEX_FORMAT, "samples": self.num_samples,
                "captions": len(arrays["caption_hashes"])}
        if self.folder is None:
            return CorpusIndex(meta, {**arrays, **{name: PackedStrings(*arrays[name]) for name in STRING_FILES}})
        for name, (_, offsets) in STRING_FILES.items():
            np.save(os.path.join(self.folder, offsets), arrays[name][1])
        for name in ARRAY_FILES:
            if name in arrays:
                np.save(os.path.join(self.folder, name + ".npy"), arrays[name])
        with open(os.path.join(self.folder, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        return CorpusIndex.load(self.folder)


def source_stamps(paths):
    """[path, size, modification time in ns] of each source file: an index is reused only while these match."""
    stamps = []
    for path in paths:
        stat = os.stat(path)
        stamps.append([os.path.abspath(path), stat.st_size, stat.st_mtime_ns])
    return stamps


def index_folder(index_dir, identity):
    """The folder of the corpus `identity` (a dict: format, data paths, keys) under index_dir."""
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    name = os.path.basename(os.path.normpath(str(identity.get("data", "corpus")).split("::")[0])) or "corpus"
    return os.path.join(index_dir, f"{name}-{digest}")


def _is_current(folder, identity, stamps):
    try:
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return meta.get("format") == INDEX_FORMAT and meta.get("identity") == identity and meta.get("sources") == stamps


@contextlib.contextmanager
def locked(path):
    """An exclusive lock on `path` (created if needed), held for the block: one builder per index at a time."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_index(index_dir, identity, sources, build, say=print):
    """The index of a corpus under index_dir, built by `build(builder)` when it is missing or its sources changed.

    `identity`: what the corpus is (format, paths, keys); `sources`: the files it is read from. Several processes
    (ranks, array tasks, a requeued job) may call this at once: one builds under a file lock, the others wait and
    map its result. The build goes to a temporary folder that is renamed into place when complete, so a killed
    build leaves nothing that a later run would read."""
    folder = index_folder(index_dir, identity)
    stamps = source_stamps(sources)
    if _is_current(folder, identity, stamps):
        return CorpusIndex.load(folder)
    with locked(folder + ".lock"):
        stamps = source_stamps(sources)
        if _is_current(folder, identity, stamps):  # built by another process while this one waited
            return CorpusIndex.load(folder)
        if os.path.isdir(folder):
            say(f"{identity['data']}: its files changed since the index {folder} was built; indexing it again")
        for stale in glob.glob(glob.escape(folder) + ".tmp-*"):  # left by a killed build (builds hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        temp, old = f"{folder}.tmp-{os.getpid()}", f"{folder}.old-{os.getpid()}"
        os.makedirs(temp)
        try:
            builder = IndexBuilder(temp)
            meta = build(builder)
            builder.finish({**meta, "identity": identity, "sources": stamps})
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        if os.path.isdir(folder):
            os.rename(folder, old)  # readers that mapped it keep their pages
        os.rename(temp, folder)
        shutil.rmtree(old, ignore_errors=True)
    return CorpusIndex.load(folder)


def build_index_in_memory(identity, build):
    """The same arrays as open_index, built in this process and never written (small evaluation sets)."""
    builder = IndexBuilder()
    meta = build(builder)
    return builder.finish({**meta, "identity": identity})
