"""Baseline plugins: each loss against a value worked out by hand on a tiny input, CMBH's
Algorithm 1 on a constructed activation map (tests/test_conformance.py runs the shared
conformance kit over every built-in plugin)."""
import json
import math
import sqlite3

import pytest
import torch
from torch.nn import functional as F

from tests.conftest import run_cli
from benchmark.features.torchvision_compat import import_torchvision
from plugins.a2net import A2Net, Generator, adsh_losses, balanced_similarity, \
    decorrelation_loss, solve_dcc
from plugins.cmbh import (CMBH, CMBHBase, CMBHLayers, CMBHLayersTransfer, activation_map, crop,
                          locate_regions)
from plugins.csq import csq_loss, hadamard, hash_centres
from plugins.dpsh import dpsh_loss
from plugins.dsh import DSH
from plugins.fish import FISH, target_codes
from plugins.greedyhash import greedyhash_loss
from plugins.hashnet import hashnet_loss
from plugins.orthohash import orthohash_loss

SHAPES = {"s8": (40, 28, 28), "s16": (112, 14, 14), "s32": (320, 7, 7), "pooled": (1280,)}
softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731


def test_dsh_matches_the_original_formulation():
    method = DSH(bits=12, num_classes=3, input_shapes={"pooled": (1280,)})
    assert method.alpha == 0.01 and isinstance(method.head[-1], torch.nn.Linear)  # linear output
    # in-batch pairs and margin 2 * bits: two dissimilar samples 2 * bits apart cost nothing
    from plugins.dsh import dsh_loss
    far = torch.tensor([[1.0] * 12, [-1.0] * 12]) * math.sqrt(24 / 48)  # ||b_i - b_j||^2 = 24
    pairwise, _ = dsh_loss(far, torch.tensor([0, 1]), bits=12)
    assert pairwise.item() == pytest.approx(0.0, abs=1e-5)
    near = far * math.sqrt(20 / 24)  # ||b_i - b_j||^2 = 20 -> (24 - 20) / (N(N-1) = 2)
    assert dsh_loss(near, torch.tensor([0, 1]), bits=12)[0].item() == pytest.approx(2.0, rel=1e-5)


def test_hashnet_loss_by_hand():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    # no self-pairs: the ordered pairs (0, 1) and (1, 0) are both dissimilar, inner product 0,
    # so every weight is |S|/|S0| = 1 and the loss is log(1 + e^0) = ln 2
    assert hashnet_loss(h, labels, alpha=0.5).item() == pytest.approx(softplus(0.0), rel=1e-6)


def test_dpsh_loss_by_hand():
    u = torch.tensor([[2.0, 0.0]])
    memory = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    # Theta = u.U_j / 2 = [2, 0]; s = [1, 0] -> -(2 - log(1+e^2)) and -(0 - log 2)
    likelihood, quant = dpsh_loss(u, torch.tensor([0]), memory, torch.tensor([0, 1]), eta=0.1)
    assert likelihood.item() == pytest.approx((-(2 - softplus(2)) + softplus(0)) / 2, rel=1e-6)
    # b = sign(u) = [1, 1] -> (b - u)^2 = [1, 1], mean 1
    assert quant.item() == pytest.approx(0.1 * 1)


def test_greedyhash_loss_and_straight_through_gradient():
    u = torch.tensor([[0.5, -2.0]], requires_grad=True)
    classifier = torch.nn.Linear(2, 2, bias=False)
    classifier.weight.data = torch.eye(2)
    ce, penalty = greedyhash_loss(u, classifier, torch.tensor([0]), alpha=0.1)
    # b = [1, -1] -> logits [1, -1]; CE = log(1 + e^-2); penalty = 0.1 * (0.5^3 + 1^3) / 2
    assert ce.item() == pytest.approx(softplus(-2), rel=1e-6)
    assert penalty.item() == pytest.approx(0.1 * (0.125 + 1) / 2)
    ce.backward()
    p = 1 / (1 + math.exp(2))  # softmax of the wrong class
    # d CE / d logits = softmax - onehot = [-p, p]; W = I; passed straight through to u
    assert torch.allclose(u.grad, torch.tensor([[-p, p]]))


def test_csq_centres_and_loss_by_hand():
    h = hadamard(8)
    assert torch.equal(h @ h.T, 8 * torch.eye(8))
    centres = hash_centres(10, 8)  # Hadamard rows and their negations
    assert torch.equal(centres[:8], h) and torch.equal(centres[8:], -h[:2])
    torch.manual_seed(0)
    random = hash_centres(100, 12)  # 12 is not a power of two
    distances = (random[:, None, :] != random[None, :, :]).sum(-1) + 12 * torch.eye(100)
    assert random.shape == (100, 12) and distances.min() >= 3
    u = torch.tensor([[0.5, -0.5]])
    central, quant = csq_loss(u, torch.tensor([[1.0, -1.0]]), lam=1e-4)
    assert central.item() == pytest.approx(-math.log(0.75), rel=1e-6)  # both bits at p = 0.75
    assert quant.item() == pytest.approx(1e-4 * 0.25)


def test_orthohash_loss_by_hand():
    z = torch.tensor([[1.0, 0.0]])
    codebook = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    c = 1 / math.sqrt(2)  # cosine to either code
    logits = torch.tensor([8 * (c - 0.2), 8 * c])
    expected = -torch.log_softmax(logits, 0)[0]
    assert orthohash_loss(z, codebook, torch.tensor([0])).item() == pytest.approx(expected.item())


def test_fish_target_codes_follow_labels():
    torch.manual_seed(0)
    labels = torch.arange(8).repeat_interleave(20)
    codes = target_codes(labels, num_classes=8, bits=16)
    assert codes.shape == (160, 16) and set(codes.unique().tolist()) <= {-1.0, 1.0}
    per_class = codes.view(8, 20, 16)
    agreement = (per_class == per_class[:, :1]).float().mean()
    assert agreement > 0.95  # codes come from labels, so a class shares (almost) one code
    assert len({tuple(c.tolist()) for c in per_class[:, 0]}) == 8


def test_fish_filters():
    method = FISH(bits=4, num_classes=3, input_shapes=SHAPES)
    logits = torch.tensor([[2.0, 1.0, -1.0]])
    method.hash_layer.weight.data = torch.eye(4, 3)
    method.hash_layer.bias.data.zero_()
    # class filter keeps the arg-max class and scales the others by 0.7
    assert torch.allclose(method.codes(logits), torch.tensor([[2.0, 0.7, -0.7, 0.0]]))


def test_a2net_losses_by_hand():
    u = torch.tensor([[0.5, -0.5]])
    database = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    labels, all_labels = torch.tensor([0]), torch.tensor([0, 1])
    s = balanced_similarity(labels, all_labels)
    assert torch.allclose(s, torch.tensor([[1.0, -1.0]]))  # 2 similar, 2 dissimilar pairs
    hash_loss, quant = adsh_losses(u, database, s, torch.tensor([0]), gamma=200)
    # u V^T = [1, 0]; (2*1 - 1)^2 + (2*(-1) - 0)^2 = 5, / (1*2) / 2 * 12
    assert hash_loss.item() == pytest.approx(5 / 2 / 2 * 12)
    # ||u - V_0||^2 = 0.25 + 0.25, / 2 * 200 / 2 * 12
    assert quant.item() == pytest.approx(0.5 / 2 * 200 / 2 * 12)
    # U^T U = [[.25, -.25], [-.25, .25]] vs I: squared errors .5625 + .0625 + .0625 + .5625
    assert decorrelation_loss(u).item() == pytest.approx(1.25 / 4 / 1 / 2)


def test_dcc_recovers_the_sign_of_consistent_outputs():
    outputs = torch.tensor([[0.9, -0.8], [0.7, -0.9], [-0.8, 0.9]])
    labels = torch.tensor([0, 0, 1])
    database = solve_dcc(torch.ones(3, 2), outputs, balanced_similarity(labels, labels))
    assert torch.equal(database, torch.tensor([[1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]]))


def test_a2net_local_features_equal_attended_maps_through_the_shared_stage():
    torch.manual_seed(0)
    method = A2Net(bits=8, num_classes=3, input_shapes=SHAPES).eval()
    inputs = {k: torch.randn((2,) + v) for k, v in SHAPES.items()}
    with torch.no_grad():
        maps = method.attention(inputs["s16"])
        direct = torch.stack([F.relu(method.local_stage(maps[:, m:m + 1] * inputs["s16"]))
                              .mean(dim=(2, 3)) for m in range(maps.shape[1])], 1)
        x = method.features(inputs)
    assert torch.allclose(x[:, :direct[0].numel()], direct.flatten(1), atol=1e-5)


def test_a2netpp_generator_equals_its_transposed_convolutions_with_gradients():
    torch.manual_seed(0)
    generator = Generator(in_dim=6, seed_hw=(3, 2), out_channels=5, dim=8)
    x = torch.randn(4, 6)
    fast = generator(x)
    direct = generator.net(generator.encoder(x)[:, :, None, None])
    assert fast.shape == (4, 5, 12, 8)
    assert torch.allclose(fast, direct, atol=1e-5)
    weight = generator.net[0].weight
    g_fast, = torch.autograd.grad(fast.square().sum(), weight)
    g_direct, = torch.autograd.grad(direct.square().sum(), weight)
    assert torch.allclose(g_fast, g_direct, atol=1e-4)


CONSTRUCTED = torch.zeros(7, 7)
CONSTRUCTED[1:3, 1:3] = 1.0    # strongest blob
CONSTRUCTED[4:6, 4:7] = 0.8    # second blob
CONSTRUCTED[0, 6] = 0.6        # a single hot cell ...
CONSTRUCTED[6, 0:3] = 0.55     # ... and a larger, slightly cooler component


def test_cmbh_algorithm1_boxes_on_a_constructed_map():
    boxes = locate_regions(torch.stack([CONSTRUCTED, CONSTRUCTED.T]), count=4)
    # m=1: threshold 0.85 -> blob 1; suppressed to a - A = 0.
    # m=2: peak 0.8, threshold 0.64 -> blob 2.
    # m=3: peak 0.6, threshold 0.45 -> {(0,6)} and row 6 cols 0-2: the larger one wins;
    #      suppression leaves row 6 at 0.6 - 0.55 = 0.05 and (0,6) at 0.
    # m=4: peak 0.05, threshold 0.035 -> row 6 again.
    expected = torch.tensor([[1, 1, 2, 2], [4, 4, 6, 5], [0, 6, 2, 6], [0, 6, 2, 6]])
    assert torch.equal(boxes[0], expected)
    assert torch.equal(boxes[1], expected[:, [1, 0, 3, 2]])  # transposed map, transposed boxes


def test_cmbh_activation_map_averages_the_positive_part():
    first = torch.tensor([[[[1.0, -3.0], [2.0, -1.0]]]])
    second = torch.tensor([[[[-2.0, 4.0], [0.0, 1.0]]]])
    # channel mean of max(F, 0): [[(1 + 0) / 2, (0 + 4) / 2], [(2 + 0) / 2, (0 + 1) / 2]]
    expected = torch.tensor([[[0.5, 2.0], [1.0, 0.5]]])
    assert torch.equal(activation_map([first, second]), expected)


def test_cmbh_crop_equals_roi_align():
    torch.manual_seed(0)
    maps = torch.randn(2, 3, 8, 8)
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.25, 0.125, 1.0, 0.875]],
                          [[0.125, 0.5, 0.625, 1.0], [0.0, 0.0, 1.0, 1.0]]])
    rois = torch.cat([torch.full((4, 1), 0.0).index_fill_(0, torch.tensor([2, 3]), 1.0),
                      boxes.reshape(-1, 4) * 8], dim=1)
    roi_align = import_torchvision().ops.roi_align
    # without torchvision's compiled operators roi_align runs its Python version, compiled
    # with torch.compile on its first call (5-40 s here): the same code, run eagerly
    with torch._dynamo.config.patch(disable=True):
        expected = roi_align(maps, rois, (3, 3), aligned=True, sampling_ratio=1)
    assert torch.allclose(crop(maps, boxes, (3, 3)), expected, atol=1e-5)


def test_cmbh_crop_gradient_equals_grid_sample_and_is_channels_last():
    torch.manual_seed(0)
    maps = torch.randn(2, 3, 8, 8, requires_grad=True)
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.25, 0.125, 1.0, 0.875]],
                          [[0.125, 0.5, 0.625, 1.0], [0.0, 0.0, 1.0, 1.0]]])
    theta = torch.zeros(4, 2, 3)  # the same crops through affine_grid + grid_sample
    x1, y1, x2, y2 = (boxes.reshape(-1, 4) * 2 - 1).unbind(1)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = \
        (x2 - x1) / 2, (x1 + x2) / 2, (y2 - y1) / 2, (y1 + y2) / 2
    grid = F.affine_grid(theta, (4, 3, 3, 3), align_corners=False)
    expected = F.grid_sample(maps.repeat_interleave(2, 0), grid, padding_mode="border",
                             align_corners=False)
    weights = torch.randn(4, 3, 3, 3)
    got = crop(maps, boxes, (3, 3))
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(got, expected, atol=1e-6)
    grads = [torch.autograd.grad((t * weights).sum(), maps)[0] for t in (got, expected)]
    assert torch.allclose(*grads, atol=1e-6)


def test_cmbh_region_boxes_once_per_position_for_frozen_maps_every_step_with_gradients():
    torch.manual_seed(0)
    method = CMBH(bits=12, num_classes=3, input_shapes=SHAPES)
    maps = [torch.randn((6,) + SHAPES[s]) for s in ("s8", "s16", "s32")]
    located = []
    locate = method.locate
    method.locate = lambda m: located.append(len(m[0])) or locate(m)
    order = [3, 0, 1, 2]  # maps[p] is the training position p's
    first = method.region_boxes([m[order] for m in maps], torch.tensor(order))
    assert torch.equal(first, locate([m[order] for m in maps]))
    again = method.region_boxes([m[[1, 4, 0]] for m in maps], torch.tensor([1, 4, 0]))
    assert located == [4, 1]  # position 4 is new, positions 1 and 0 come from the first call
    assert torch.equal(again, torch.stack([first[2], locate([m[4:5] for m in maps])[0], first[1]]))
    trained = [m.requires_grad_() for m in maps]  # finetune: the backbone's outputs
    method.region_boxes(trained, torch.arange(6))
    assert located == [4, 1, 6]


def test_cmbh_hash_loss_by_hand():
    method = CMBH(bits=2, num_classes=2, input_shapes=SHAPES)
    codes = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    proxies = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    # labels 0, 0, 1: 5 similar of 9 pairs -> dissimilar entries become -5/4
    method.previous = (codes, proxies, torch.tensor(5 / 4), torch.tensor([0, 0, 1]))
    u = torch.tensor([[0.5, 0.5]])
    pair, proxy = method.hash_loss(u, torch.tensor([0]))
    # u.b = [1, 0, -1] vs 2 * [1, 1, -5/4] = [2, 2, -2.5]: errors 1, 4, 2.25
    assert pair.item() == pytest.approx((1 + 4 + 2.25) / 3)
    # u.c = [0.5, -0.5] vs 2 * [1, -1/(2-1)] = [2, -2]: errors 2.25, 2.25
    assert proxy.item() == pytest.approx(2.25)


def test_cmbh_inference_path_uses_only_the_hash_stage_matching_and_w_h():
    torch.manual_seed(0)
    method = CMBH(bits=12, num_classes=5, input_shapes=SHAPES).eval()
    inputs = {k: torch.randn((2,) + v) for k, v in SHAPES.items()}
    with torch.no_grad():
        before = method.encode(inputs)
        others = [j for j in range(3) if j != method.l]
        for module in [method.sub[j] for j in others] + [method.fusion, method.stage_classifiers]:
            for p in module.parameters():
                p.fill_(float("nan"))  # training-only modules
        assert torch.equal(method.encode(inputs), before)
        for j in others:
            inputs[("s8", "s16", "s32")[j]].fill_(float("nan"))
        assert torch.equal(method.encode(inputs), before)


def test_cmbh_ablation_variants_switch_the_loss_terms():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2, 0])
    inputs = {k: torch.randn((4,) + v) for k, v in SHAPES.items()}
    terms = {}
    for cls in (CMBHBase, CMBHLayers, CMBHLayersTransfer, CMBH):
        method = cls(bits=12, num_classes=3, input_shapes=SHAPES)
        method.previous = (torch.ones(4, 12), torch.zeros(3, 12), torch.tensor(0.5), labels)
        terms[cls.name] = sorted(method.loss({"inputs": inputs, "labels": labels,
                                              "indices": torch.arange(4)}))
    assert terms == {"cmbh-b": ["hash_pair", "hash_proxy"],
                     "cmbh-l": ["cls", "hash_pair", "hash_proxy"],
                     "cmbh-lt": ["cls", "hash_pair", "hash_proxy", "trans"],
                     "cmbh": ["cls", "hash_pair", "hash_proxy", "region", "trans"]}


class KnownCollapse(AssertionError):
    """The measured, known failure of the finetune smoke (raised only by its LSH comparison)."""


@pytest.mark.xfail(strict=True, raises=KnownCollapse,
                   reason="known: after 1 finetune epoch here CMBH and A2-Net++ give one code to "
                          "every database image (A2-Net++ also in the frozen regime, CMBH also after "
                          "4 finetune epochs from EfficientNet-Lite0); strict: remove once they beat LSH")
def test_finetune_smoke_cmbh_and_a2netpp_with_resnet18_beat_lsh(tmp_path):
    """The paper protocol end to end on CPU: ResNet-18 fine-tuned with each method, which
    must rank better than LSH on the same backbone (tie-aware mAP: one code for every image
    scores well under the index tie-break on a class-sorted database)."""
    out = tmp_path / "ft"
    result = run_cli("run", "--methods", "cmbh,a2netpp,lsh", "--dataset", "synthetic-fg",
                     "--input-size", "64", "--epochs", "1", "--bits", "8", "--regime", "finetune",
                     "--backbone", "resnet18", "--backbone-weights", "none", "--max-classes", "4",
                     "--out", out, "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    with sqlite3.connect(out / "results.sqlite") as db:
        rows = db.execute("SELECT method, regime, backbone, metrics FROM runs "
                          "WHERE status = 'ok' ORDER BY method").fetchall()
    assert [r[:3] for r in rows] == [("a2netpp", "finetune", "resnet18"),
                                     ("cmbh", "finetune", "resnet18"), ("lsh", "finetune", "resnet18")]
    found = {r[0]: json.loads(r[3])["map_tie_aware"] for r in rows}
    if not (found["cmbh"] > found["lsh"] and found["a2netpp"] > found["lsh"]):
        raise KnownCollapse(f"tie-aware mAP {found}: not both above LSH")
