"""The ProCLIP adapter (common/proclip.py, docs/methods.md §2) and ProCLIP's open_clip interface."""
import open_clip
import pytest
import torch
import torch.nn.functional as F

from common.proclip import Adapter, ProCLIP



@pytest.mark.parametrize("in_dim, embed_dim", [(384, 512), (1024, 768), (16, 8)])
def test_adapter_outputs_clip_embedding_dimension(in_dim, embed_dim):
    adapter = Adapter(in_dim, embed_dim, depth=2, expansion=2)
    assert adapter(torch.randn(5, in_dim)).shape == (5, embed_dim)


def test_adapter_normalises_its_input():
    torch.manual_seed(0)
    adapter = Adapter(12, 6).eval()
    x = torch.randn(4, 12)
    # Rows scaled by different positive factors are the same direction, hence the same normalised input.
    scales = torch.tensor([[0.01], [3.0], [70.0], [1.0]])
    torch.testing.assert_close(adapter(x * scales), adapter(x))
    assert not torch.allclose(adapter(x), adapter(-x))  # a different direction does change the output


def test_adapter_parameter_shapes_follow_depth_and_expansion():
    d, e, out, depth = 10, 3, 7, 5
    adapter = Adapter(d, out, depth=depth, expansion=e)
    assert len(adapter.blocks) == depth
    for block in adapter.blocks:
        assert block.expand.weight.shape == (e * d, d)
        assert block.contract.weight.shape == (d, e * d)
    assert adapter.projection.weight.shape == (out, d)
    # Per block: LayerNorm (2d) + Linear d→ed (d·ed + ed) + Linear ed→d (ed·d + d); then LayerNorm + Linear d→out.
    per_block = 2 * d + (d * e * d + e * d) + (e * d * d + d)
    expected = depth * per_block + 2 * d + (d * out + out)
    assert sum(p.numel() for p in adapter.parameters()) == expected


def test_adapter_matches_the_formula_of_methods_section_2():
    torch.manual_seed(1)
    adapter = Adapter(8, 5, depth=2, expansion=2).eval()
    for p in adapter.parameters():  # move LayerNorm weights off their (1, 0) init so the test sees them
        torch.nn.init.normal_(p, std=0.5)
    embeddings = torch.randn(3, 8) * 4
    x = embeddings / embeddings.norm(dim=1, keepdim=True)
    for b in adapter.blocks:
        h = F.layer_norm(x, (8,), b.norm.weight, b.norm.bias)
        h = F.gelu(h @ b.expand.weight.T + b.expand.bias)
        x = x + h @ b.contract.weight.T + b.contract.bias
    x = F.layer_norm(x, (8,), adapter.final_norm.weight, adapter.final_norm.bias)
    expected = x @ adapter.projection.weight.T + adapter.projection.bias
    torch.testing.assert_close(adapter(embeddings), expected)


def test_adapter_rejects_wrong_input_dimension():
    with pytest.raises(ValueError, match="dimension 384"):
        Adapter(384, 512)(torch.randn(2, 768))


# --- the open_clip interface: open_clip's helpers may call encode_text or model(text=...) ---------------------------

def _tiny_proclip():
    torch.manual_seed(2)
    return ProCLIP(torch.nn.Linear(6, 5), Adapter(8, 5, depth=1), logit_scale=4.6).eval()


def test_forward_matches_open_clip_clip_forward():
    model, images, embeddings = _tiny_proclip(), torch.randn(3, 6), torch.randn(4, 8)
    image_features, text_features, scale = model(image=images, text=embeddings)
    torch.testing.assert_close(image_features, F.normalize(model.encode_image(images), dim=-1))
    torch.testing.assert_close(text_features, F.normalize(model.encode_text(embeddings), dim=-1))
    assert scale.item() == pytest.approx(torch.exp(torch.tensor(4.6)).item())
    assert model(text=embeddings)[0] is None and model(image=images)[1] is None


def test_open_clip_zero_shot_classifier_works_on_proclip():
    """The guard for open_clip releases: its build_zero_shot_classifier must give the mean of the normalised
    prompt embeddings, renormalised, whether it calls encode_text or forward."""
    model = _tiny_proclip()
    vectors = {name: torch.randn(8) for name in ("a {}", "the {}")}
    tokenizer = lambda texts: torch.stack([vectors[t.replace("cat", "{}").replace("dog", "{}")]  # noqa: E731
                                           + (1.0 if "cat" in t else -1.0) for t in texts])
    classifier = open_clip.build_zero_shot_classifier(model, tokenizer, ["cat", "dog"], ["a {}", "the {}"],
                                                      device="cpu")
    for column, name in enumerate(["cat", "dog"]):
        prompts = F.normalize(model.encode_text(tokenizer([f"a {name}", f"the {name}"])), dim=-1)
        torch.testing.assert_close(classifier[:, column], F.normalize(prompts.mean(0), dim=0))
