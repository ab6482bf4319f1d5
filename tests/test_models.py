"""common/models.py: the toy architecture through open_clip's registry, and checkpoints open_clip loads as-is."""
import open_clip
import pytest
import torch

from common.checkpoints import load_checkpoint_file
from common.models import build_clip, save_clip_checkpoint


def test_checkpoint_round_trip_through_open_clip(tmp_path):
    torch.manual_seed(1)
    model, _, preprocess, tokenizer = build_clip("ToyCLIP")
    path = str(tmp_path / "model.pt")
    save_clip_checkpoint(path, model, arch="ToyCLIP", objective="contrastive")
    loaded, _, _ = open_clip.create_model_and_transforms("ToyCLIP", pretrained=path)
    saved, reloaded = model.state_dict(), loaded.state_dict()
    assert saved.keys() == reloaded.keys()  # no key missing on either side
    for name in saved:
        assert torch.equal(saved[name], reloaded[name]), name
    meta = load_checkpoint_file(path)  # weights_only=True: plain metadata only
    assert meta["arch"] == "ToyCLIP" and meta["objective"] == "contrastive"
    image = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model.encode_image(image), loaded.encode_image(image))
    assert not list(tmp_path.glob("*.tmp*")), "atomic save leaves no temp file"


def test_toy_clip_has_clip_like_low_temperature_and_context_length():
    model, _, _, tokenizer = build_clip("ToyCLIP")
    assert model.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-4)
    assert tokenizer(["a red circle"]).shape == (1, 32)


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown arch 'ToyCLIPP'"):
        build_clip("ToyCLIPP")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint file nor a tag"):
        build_clip("ToyCLIP", pretrained=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="QuickGELU"):
        build_clip("ViT-B-32", pretrained="openai")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint .*broken.pt"):
        load_checkpoint_file(str(broken))


def test_encode_text_without_the_padding_columns_gives_the_same_features():
    import open_clip
    import torch

    from common.models import PaddingTrimmedCLIP, build_clip, encode_text
    torch.manual_seed(0)
    model, _, _, tokenizer = build_clip("ToyCLIP")
    tokens = tokenizer(["a red circle", "two objects: a small blue square at the top left and a star"])
    assert (tokens[:, -5:] == 0).all(), "the batch has padding columns to drop"
    torch.testing.assert_close(encode_text(model, tokens), model.encode_text(tokens), atol=1e-5, rtol=1e-5)
    full = tokenizer(["word " * 40])  # no padding column: open_clip's own path
    assert torch.equal(encode_text(model, full), model.encode_text(full))
    # build_clip(trim_text_padding=True): the same weights, whose encode_text is the trimmed one
    torch.manual_seed(0)
    trimmed = build_clip("ToyCLIP", trim_text_padding=True)[0]
    assert type(trimmed) is PaddingTrimmedCLIP and type(model) is open_clip.CLIP
    assert torch.equal(trimmed.encode_text(tokens), encode_text(model, tokens))
    assert torch.equal(trimmed.encode_text(full), model.encode_text(full))
