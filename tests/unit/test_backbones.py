from pathlib import Path

import pytest
import torch

from visage_ml.models.backbones import (
    FACENET_WEIGHTS,
    create_backbone,
    list_backbones,
)


def test_registry_lists_every_backbone():
    names = list_backbones()
    for name in (
        "inception_resnet_v1",
        "mobilefacenet",
        "mobilefacenet_full",
        "resnet18",
        "resnet34",
        "resnet50",
    ):
        assert name in names


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ValueError) as err:
        create_backbone("vgg_face", embedding_dim=64, input_size=64)
    msg = str(err.value)
    assert "vgg_face" in msg
    assert "mobilefacenet" in msg and "resnet18" in msg and "inception_resnet_v1" in msg


@pytest.mark.parametrize(
    ("name", "size", "dim"),
    [
        ("mobilefacenet", 96, 128),
        ("mobilefacenet", 40, 64),
        ("mobilefacenet_full", 64, 256),
        ("resnet18", 64, 128),
        ("inception_resnet_v1", 96, 128),
    ],
)
def test_embeddings_are_unit_vectors_of_the_asked_size(name, size, dim):
    torch.manual_seed(0)
    model = create_backbone(name, embedding_dim=dim, input_size=size).eval()
    with torch.no_grad():
        emb = model(torch.randn(3, 3, size, size))
    assert emb.shape == (3, dim)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert (model.name, model.embedding_dim, model.input_size) == (name, dim, size)


def test_named_weights_missing_name_file_and_folder_and_never_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))

    def no_download(*args, **kwargs):
        raise AssertionError("attempted a download")

    import facenet_pytorch.models.inception_resnet_v1 as irv1

    monkeypatch.setattr(irv1, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(FileNotFoundError) as err:
        create_backbone("inception_resnet_v1", embedding_dim=512, input_size=160, init="vggface2")
    msg = str(err.value)
    assert "20180402-114759-vggface2.pt" in msg
    assert str(tmp_path / "th" / "checkpoints") in msg
    assert "download" in msg  # says how to obtain it
    assert not (tmp_path / "th" / "checkpoints" / FACENET_WEIGHTS["vggface2"]).exists()


def test_named_weights_are_read_from_torch_home(tmp_path, monkeypatch):
    from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    published = InceptionResnetV1(pretrained=None, classify=False).state_dict()
    # The published file also carries the classifier of its training identities.
    published["logits.weight"] = torch.zeros(7, 512)
    published["logits.bias"] = torch.zeros(7)
    (tmp_path / "checkpoints").mkdir()
    torch.save(published, tmp_path / "checkpoints" / FACENET_WEIGHTS["casia-webface"])
    model = create_backbone(
        "inception_resnet_v1", embedding_dim=512, input_size=96, init="casia-webface"
    )
    loaded = model.state_dict()
    assert torch.equal(
        loaded["trunk.net.conv2d_1a.conv.weight"], published["conv2d_1a.conv.weight"]
    )
    assert torch.equal(loaded["trunk.net.last_linear.weight"], published["last_linear.weight"])


def test_init_from_a_path_restores_the_weights(tmp_path: Path):
    torch.manual_seed(0)
    first = create_backbone("mobilefacenet", embedding_dim=32, input_size=40).eval()
    torch.save(first.state_dict(), tmp_path / "w.pt")
    torch.manual_seed(99)
    second = create_backbone(
        "mobilefacenet", embedding_dim=32, input_size=40, init=str(tmp_path / "w.pt")
    ).eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(first(x), second(x))


def test_bad_init_says_what_to_do(tmp_path: Path):
    with pytest.raises(ValueError, match="inception_resnet_v1"):
        create_backbone("mobilefacenet", embedding_dim=32, input_size=40, init="vggface2")
    with pytest.raises(FileNotFoundError, match="scratch"):
        create_backbone(
            "mobilefacenet", embedding_dim=32, input_size=40, init=str(tmp_path / "nope.pt")
        )
    with pytest.raises(ValueError, match="input_size"):
        create_backbone("inception_resnet_v1", embedding_dim=32, input_size=64)
