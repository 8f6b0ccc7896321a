"""Tests of the model registry: shapes, hand-counted parameters, seeded weights."""

from __future__ import annotations

import pytest
import torch

from distlab.models import MODELS, SPLIT_POINTS, build_model, count_parameters, model_layers

# (input shape, classes) of the registered datasets: mnist, digits, cifar10, synthetic
IMAGE_SHAPES = [((1, 28, 28), 10), ((1, 8, 8), 10), ((3, 32, 32), 10)]
ALL_SHAPES = [*IMAGE_SHAPES, ((20,), 4)]


def logits_shape(name: str, shape: tuple[int, ...], classes: int) -> tuple[int, ...]:
    model = build_model(name, shape, classes, seed=0)
    model.eval()
    return tuple(model(torch.zeros(3, *shape)).shape)


@pytest.mark.parametrize("name", ["lenet", "cnn-dropout"])
@pytest.mark.parametrize(("shape", "classes"), IMAGE_SHAPES)
def test_cnns_adapt_to_image_shape(name, shape, classes):
    assert logits_shape(name, shape, classes) == (3, classes)


@pytest.mark.parametrize("name", ["mlp", "logreg"])
@pytest.mark.parametrize(("shape", "classes"), ALL_SHAPES)
def test_flat_models_adapt_to_any_shape(name, shape, classes):
    assert logits_shape(name, shape, classes) == (3, classes)


@pytest.mark.parametrize("name", ["lenet", "cnn-dropout"])
def test_cnn_on_flat_input_is_a_clear_error(name):
    with pytest.raises(ValueError, match=r"needs image input \(C, H, W\); got shape \(20,\)"):
        build_model(name, (20,), 4, seed=0)


@pytest.mark.parametrize("shape", [(1, 28, 20), (1, 3, 3)])
def test_cnn_needs_square_images_of_side_4(shape):
    with pytest.raises(ValueError, match=r"needs square images of side >= 4"):
        build_model("lenet", shape, 10, seed=0)


def test_cnn_on_the_smallest_image():
    assert logits_shape("cnn-dropout", (1, 4, 4), 3) == (3, 3)


def test_unknown_model_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown model 'vgg' \(allowed: cnn-dropout, lenet"):
        build_model("vgg", (1, 28, 28), 10, seed=0)


@pytest.mark.parametrize(
    ("name", "shape", "classes", "expected"),
    [
        ("logreg", (20,), 4, 20 * 4 + 4),
        ("logreg", (1, 28, 28), 10, 784 * 10 + 10),
        # conv 1->6 (5x5), conv 6->16 (5x5), 16*4*4 -> 120 -> 84 -> 10
        ("lenet", (1, 28, 28), 10, 156 + 2416 + 30840 + 10164 + 850),
        # CIFAR: conv 3->6 (5x5), 16*5*5 -> 120, the rest as above
        ("lenet", (3, 32, 32), 10, 456 + 2416 + 48120 + 10164 + 850),
        # digits: 3x3 kernels, padding 1: 8 -> 4 -> 2, so fc1 takes 16*2*2
        ("lenet", (1, 8, 8), 10, 60 + 880 + 7800 + 10164 + 850),
        # 20 -> 200 -> 200 -> 4
        ("mlp", (20,), 4, 4200 + 40200 + 804),
    ],
)
def test_parameter_counts_match_hand_counts(name, shape, classes, expected):
    assert count_parameters(build_model(name, shape, classes, seed=0)) == expected


def test_lenet_on_mnist_has_44426_parameters():
    assert count_parameters(build_model("lenet", (1, 28, 28), 10, seed=0)) == 44426


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_seed_same_weights_other_seed_other_weights(name):
    a = build_model(name, (1, 28, 28), 10, seed=7).state_dict()
    b = build_model(name, (1, 28, 28), 10, seed=7).state_dict()
    c = build_model(name, (1, 28, 28), 10, seed=8).state_dict()

    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_build_model_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)

    build_model("lenet", (1, 28, 28), 10, seed=0)

    assert torch.equal(torch.rand(4), expected)


# --- pipeline split points -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(("shape", "classes"), [((1, 28, 28), 10), ((1, 8, 8), 10)])
def test_layers_chained_are_the_forward_pass(name, shape, classes):
    model = build_model(name, shape, classes, seed=0).eval()
    x = torch.randn(4, *shape)

    h = x
    for layer in model_layers(model):
        h = layer(h)

    assert torch.equal(h, model(x))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_split_points_match_the_layers(name):
    points = SPLIT_POINTS[name]
    layers = model_layers(build_model(name, (1, 28, 28), 10, seed=0))

    assert len(layers) == points.layers
    assert all(0 < cut < points.layers for cut in points.declared)
    assert len(set(points.declared)) == len(points.declared)


def test_layers_share_the_models_parameters():
    model = build_model("lenet", (1, 28, 28), 10, seed=0)
    in_layers = {id(p) for layer in model_layers(model) for p in layer.parameters()}
    assert in_layers == {id(p) for p in model.parameters()}


def test_lenet_is_first_cut_between_convolutions_and_fully_connected_layers():
    assert SPLIT_POINTS["lenet"].declared[0] == 2
    assert SPLIT_POINTS["lenet"].boundaries == (1, 2, 3, 4)


def test_binary_logreg_is_logistic_regression_with_one_logit():
    import torch.nn.functional as F

    model = build_model("logreg", (5,), 2, seed=0)
    assert [tuple(p.shape) for p in model.parameters()] == [(1, 5), (1,)]
    x, y = torch.randn(8, 5), torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    z = model.net(x).squeeze(1)
    loss = F.cross_entropy(model(x), y)
    logistic = F.binary_cross_entropy_with_logits(z, y.float())
    assert torch.allclose(loss, logistic, atol=1e-6)
    assert torch.equal(model(x).argmax(1), (z > 0).long())
