"""tools/fill_cache.py: the texts of the stage and evaluation configs, in parts, with the config's storage and
remote-code keys given as key=value; a stub embedder stands in for the language model."""
import zlib

import numpy as np
import pytest
import torch

import proclip_stage2
from common import embedder as embedder_module
from common.config import ConfigError, load_config
from common.embedder import open_filled_cache
from common.proclip import build_training_set
from tools import fill_cache

STUB_DIM = 16


def stub_embedding(text):
    vector = torch.zeros(STUB_DIM)
    for word in text.lower().replace(".", " ").replace(",", " ").split():
        vector[zlib.crc32(word.encode()) % STUB_DIM] += 1.0
    return vector


class RecordingEmbedder:
    """Stands in for load_embedder's model; records how it was loaded."""
    loads = []

    def __init__(self, *args, **kwargs):
        RecordingEmbedder.loads.append(kwargs)

    def encode(self, texts, batch_size, show_progress_bar, convert_to_tensor):
        return torch.stack([stub_embedding(t) for t in texts])

    def get_embedding_dimension(self):
        return STUB_DIM


def test_fill_cache_in_parts_with_fp16_storage_and_remote_code_key(tiny_world, tmp_path, monkeypatch):
    monkeypatch.setattr(embedder_module, "load_embedder", RecordingEmbedder)
    RecordingEmbedder.loads.clear()
    cache_dir = tmp_path / "cache"
    overrides = [f"train_data={tiny_world / 'recaption.csv'}", "max_images=20", "embedder=stub-embedder",
                 f"embedding_cache={cache_dir}", "embedding_cache_dtype=float16"]
    command = ["--stage1-config", "configs/toy/proclip_stage1.yaml", *overrides[:2],  # key=value anywhere
               "--stage2-config", "configs/toy/proclip_stage2.yaml", "--device", "cpu", "--num-parts", "2",
               *overrides[2:]]
    fill_cache.main(command + ["--part", "1"])
    fill_cache.main(command + ["--part", "0", "embedder_trust_remote_code=true"])
    assert [load["trust_remote_code"] for load in RecordingEmbedder.loads] == [False, True]
    assert sorted(p.name for p in cache_dir.glob("shard-*")) == ["shard-part000of002-00000",
                                                               "shard-part001of002-00000"]
    captions = build_training_set(load_config(proclip_stage2.DEFAULTS, None, overrides), None).captions
    cache = open_filled_cache(cache_dir, "stub-embedder")
    assert len(cache) == len(set(captions)) and cache._shards[0].arrays()[0].dtype == np.float16
    torch.testing.assert_close(cache.lookup(captions), torch.stack([stub_embedding(t) for t in captions]))
    fill_cache.main(command + ["--part", "0"])  # a second fill of a full part loads no model
    assert len(RecordingEmbedder.loads) == 2


def test_key_value_after_a_stage_config_is_an_override(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):  # taken as train_data, not as a config file
        fill_cache.main(["--stage1-config", "configs/toy/proclip_stage1.yaml", f"train_data={tmp_path}/nowhere.csv"])


def test_each_stage_reads_its_own_keys_and_unknown_keys_are_refused():
    configs = fill_cache.stage_configs({"stage1": "configs/toy/proclip_stage1.yaml",
                                        "stage2": "configs/toy/proclip_stage2.yaml"},
                                       {"reg_weight": 0.5, "instance_long_captions": True, "max_images": 7})
    assert configs["stage2"].reg_weight == 0.5 and configs["stage1"].instance_long_captions
    assert configs["stage1"].max_images == configs["stage2"].max_images == 7
    assert configs["stage1"].csv_caption_keys == ["short"], "the stage's own DEFAULTS and YAML"
    with pytest.raises(ConfigError, match="unknown key 'max_image'"):
        fill_cache.stage_configs({"stage1": "configs/toy/proclip_stage1.yaml", "stage2": ""}, {"max_image": 7})
    with pytest.raises(ConfigError, match=r"'--max-images=7' is not an option; config keys are given as key=value "
                                          r"\(max_images=VALUE\)"):
        fill_cache.main(["--stage1-config", "configs/toy/proclip_stage1.yaml", "--max-images=7"])
