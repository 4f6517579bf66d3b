"""DPSH and HashNet losses against values worked out by hand on tiny tensors, the HashNet
continuation schedule at given steps, and the DPSH memory as non-persistent buffers."""
import numpy as np
import torch

from benchmark.method import HashMethod
from plugins.dpsh import DPSH, dpsh_loss
from plugins.hashnet import HashNet, continuation_beta, hashnet_loss, pair_weights

SHAPES = {"pooled": (8,)}


def softplus(x):
    return float(np.log1p(np.exp(x)))


def close(a, b, rel=1e-6):
    a, b = (x.detach() if isinstance(x, torch.Tensor) else x for x in (a, b))
    return bool(np.isclose(float(a), float(b), rtol=rel, atol=1e-12))


# --- HashNet -------------------------------------------------------------------------------

def test_hashnet_has_no_self_pairs():
    # two samples of different labels: with self-pairs the diagonal would add two "similar"
    # pairs; without them only the two dissimilar pairs (inner product 0) remain
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    assert close(hashnet_loss(h, labels, alpha=0.5), softplus(0.0))
    similar = (labels[:, None] == labels[None, :]).float()
    mask = ~torch.eye(2, dtype=torch.bool)
    weights = pair_weights(similar, mask)
    assert torch.equal(torch.diagonal(weights), torch.zeros(2))
    # identical codes of one label: the only pairs are the two off-diagonal similar ones
    same = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    assert close(hashnet_loss(same, torch.tensor([3, 3]), alpha=0.5), softplus(1.0) - 1.0)


def test_hashnet_weighting_by_hand():
    h = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    alpha = 0.5
    # ordered pairs i != j: 6; similar (0,1), (1,0): |S1| = 2 -> weight 6/2 = 3;
    # dissimilar (0,2), (2,0), (1,2), (2,1): |S0| = 4 -> weight 6/4 = 1.5
    similar = (labels[:, None] == labels[None, :]).float()
    weights = pair_weights(similar, ~torch.eye(3, dtype=torch.bool))
    expected_w = torch.tensor([[0.0, 3.0, 1.5], [3.0, 0.0, 1.5], [1.5, 1.5, 0.0]])
    assert torch.allclose(weights, expected_w)
    # similar pairs: alpha <h_i, h_j> = 0.5 -> softplus(0.5) - 0.5; dissimilar: inner 0
    expected = (2 * 3.0 * (softplus(0.5) - 0.5) + 4 * 1.5 * softplus(0.0)) / 6
    assert close(hashnet_loss(h, labels, alpha), expected)
    # = mean over similar pairs + mean over dissimilar pairs
    assert close(expected, (softplus(0.5) - 0.5) + softplus(0.0))


def test_hashnet_batch_without_similar_pairs_is_the_plain_mean():
    h = torch.tensor([[0.5, -0.5], [0.2, 0.1], [-1.0, 0.3]])
    inner = 0.7 * h @ h.T
    off = ~torch.eye(3, dtype=torch.bool)
    expected = torch.nn.functional.softplus(inner)[off].mean()
    assert close(hashnet_loss(h, torch.tensor([0, 1, 2]), alpha=0.7), expected)


def test_continuation_schedule_values():
    # the authors' rule: every 200 iterations t, beta = 1 * (1 + 0.005 t) ** 0.5
    assert continuation_beta(0) == 1.0
    assert close(continuation_beta(1), 2 ** 0.5)
    assert close(continuation_beta(3), 2.0)
    assert close(continuation_beta(49), 50 ** 0.5)  # the paper's beta from iteration 9800
    for step in (0, 7, 49):
        t = 200 * step
        assert close(continuation_beta(step), (1 + 0.005 * t) ** 0.5)
    assert close(continuation_beta(2, init_scale=2.0, gamma=0.01, power=1.0, step_size=100),
                 2.0 * (1 + 0.01 * 200))


def test_hashnet_beta_per_epoch_ends_at_the_papers_final_value():
    method = HashNet(bits=12, num_classes=3, input_shapes=SHAPES)
    assert isinstance(method, HashMethod) and method.alpha == 10.0 / 12
    epochs = HashNet.train_config["epochs"]
    betas = []
    for epoch in range(epochs):
        method.on_epoch_start(epoch, None)
        betas.append(method.beta)
    assert betas[0] == 1.0 and close(betas[1], 2 ** 0.5)
    assert close(betas[-1], 50 ** 0.5)  # 7.07, the paper's last 200-iteration step
    slow = HashNet(bits=12, num_classes=3, input_shapes=SHAPES, epochs_per_step=2)
    slow.on_epoch_start(3, None)
    assert close(slow.beta, 2 ** 0.5)


def test_hashnet_loss_uses_tanh_beta_z():
    torch.manual_seed(0)
    method = HashNet(bits=4, num_classes=2, input_shapes=SHAPES)
    method.on_epoch_start(3, None)  # beta = 2
    x = torch.randn(3, 8)
    labels = torch.tensor([0, 0, 1])
    got = method.loss({"inputs": {"pooled": x}, "labels": labels, "indices": torch.arange(3)})
    h = torch.tanh(2.0 * method.encode({"pooled": x}))
    assert close(got["pairwise"], hashnet_loss(h, labels, 10.0 / 4))


# --- DPSH ----------------------------------------------------------------------------------

def test_dpsh_loss_by_hand():
    u = torch.tensor([[2.0, 0.0]])
    memory = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    # Theta = u.U_j / 2 = [2, 0]; s = [1, 0] -> mean of (softplus(2) - 2) and softplus(0)
    likelihood, quant = dpsh_loss(u, torch.tensor([0]), memory, torch.tensor([0, 1]), eta=0.1)
    assert close(likelihood, ((softplus(2) - 2) + softplus(0)) / 2)
    # b = [1, 1] (u >= 0 -> +1) -> (b - u)^2 = [1, 1], mean 1
    assert close(quant, 0.1)


def test_dpsh_loss_mean_over_batch_and_memory():
    u = torch.tensor([[1.0, -1.0], [0.5, 0.5]])
    memory = torch.tensor([[1.0, -1.0], [0.5, 0.5], [-2.0, 0.0]])
    labels, memory_labels = torch.tensor([0, 1]), torch.tensor([0, 1, 0])
    # Theta = u U^T / 2: row 0 [1, 0, -1], row 1 [0, 0.25, -0.5]
    # s: row 0 [1, 0, 1], row 1 [0, 1, 0]
    terms = [softplus(1) - 1, softplus(0), softplus(-1) + 1,
             softplus(0), softplus(0.25) - 0.25, softplus(-0.5)]
    likelihood, quant = dpsh_loss(u, labels, memory, memory_labels, eta=0.5)
    assert close(likelihood, sum(terms) / 6)
    # b = [[1, -1], [1, 1]] -> (b - u)^2 = [[0, 0], [0.25, 0.25]], mean 0.125
    assert close(quant, 0.5 * 0.125)


def test_dpsh_memory_is_a_non_persistent_buffer_updated_before_the_loss():
    torch.manual_seed(0)
    method = DPSH(bits=4, num_classes=2, input_shapes=SHAPES)

    class Data:
        labels = torch.tensor([0, 1, 0, 1, 1])

        def __len__(self):
            return 5

    method.on_epoch_start(0, Data())
    assert method.memory.shape == (5, 4) and not method.memory.any()
    assert "memory" not in method.state_dict() and "memory_labels" not in method.state_dict()
    assert {"memory", "memory_labels"} <= {name for name, _ in method.named_buffers()}
    x = torch.randn(2, 8)
    batch = {"inputs": {"pooled": x}, "labels": torch.tensor([1, 0]),
             "indices": torch.tensor([3, 0])}
    losses = method.loss(batch)
    u = method.encode({"pooled": x}).detach()
    assert torch.equal(method.memory[[3, 0]], u) and not method.memory[[1, 2, 4]].any()
    expected = dpsh_loss(u, batch["labels"], method.memory, Data.labels, method.eta)
    assert close(losses["likelihood"], expected[0]) and close(losses["quantisation"], expected[1])
    method.on_epoch_start(1, Data())  # later epochs keep the memory
    assert torch.equal(method.memory[[3, 0]], u)
