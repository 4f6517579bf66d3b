"""ADSH (plugins/adsh): the bitwise V-step against brute force, the loss by hand, the Omega
sampler, the learned database codes, device placement and a tiny end-to-end training
(driven here by a minimal loop that calls the hooks the way the harness does)."""
import itertools
import math

import numpy as np
import torch
from torch import nn

from benchmark.method import HashMethod
from plugins.adsh import (ADSH, ADSHNetworkDB, adsh_objective, dcc_update, dissimilar_weight,
                          similarity_matrix)


class Data:
    """What ``on_epoch_start`` / ``on_train_end`` receive: all training inputs and labels."""

    def __init__(self, pooled, labels):
        self.inputs, self.labels = {"pooled": pooled}, labels

    def __len__(self):
        return len(self.labels)


def make(cls=ADSH, bits=3, dim=4, classes=2, **hparams):
    return cls(bits=bits, num_classes=classes, input_shapes={"pooled": (dim,)}, **hparams)


def train_loop(method, data, epochs, seed=0, lr=1e-2, momentum=0.9, indices_first=False):
    """The harness's loop: hooks in eval mode without gradients, Omega from epoch_indices,
    shuffled with the run's generator, batches of the configured size."""
    optimizer = torch.optim.SGD(method.parameters(), lr=lr, momentum=momentum,
                                weight_decay=5e-4)
    generator = torch.Generator().manual_seed(seed)
    batch_size = method.train_config["batch_size"]
    for epoch in range(epochs):
        if indices_first:
            chosen = method.epoch_indices(epoch, len(data), generator)
        method.eval()
        with torch.no_grad():
            method.on_epoch_start(epoch, data)
        if not indices_first:
            chosen = method.epoch_indices(epoch, len(data), generator)
        order = chosen[torch.randperm(len(chosen), generator=generator)]
        method.train()
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            if len(index) < 2:
                continue
            batch = {"inputs": {"pooled": data.inputs["pooled"][index]},
                     "labels": data.labels[index], "indices": index}
            loss = sum(method.loss(batch).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    method.eval()
    with torch.no_grad():
        method.on_train_end(data)
    return method


def toy(per_class=20, classes=4, dim=8, noise=0.4, seed=0):
    """A separable pooled feature: one orthogonal direction per class, plus noise."""
    g = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.eye(dim)[:classes]
    labels = torch.arange(classes).repeat_interleave(per_class)
    x = means[labels] + noise * torch.randn(len(labels), dim, generator=g)
    return x, labels


def mean_ap(query_codes, db_codes, query_labels, db_labels):
    """mAP@all of a Hamming ranking (0/1 codes; ties broken by database index)."""
    aps = []
    for code, label in zip(query_codes, query_labels):
        distance = (code[None, :] != db_codes).sum(1)
        order = np.argsort(distance, kind="stable")
        relevant = db_labels[order] == label
        hits = np.cumsum(relevant)
        ranks = np.flatnonzero(relevant) + 1
        aps.append(float((hits[ranks - 1] / ranks).mean()) if len(ranks) else 0.0)
    return float(np.mean(aps))


# -- the V-step (paper Eqs. 5-7) -------------------------------------------------------------

def _problem(seed, similarity):
    g = torch.Generator().manual_seed(seed)
    n, bits, classes = 5, 3, 2
    labels = torch.tensor([0, 1, 0, 1, 1])
    omega = torch.tensor([3, 0, 4])
    u = torch.rand(len(omega), bits, generator=g) * 2 - 1
    r = dissimilar_weight(labels[omega], labels, classes, similarity)
    s = similarity_matrix(labels[omega], labels, r)
    return n, bits, classes, labels, omega, u, r, s


def test_similarity_and_its_soft_weight():
    labels = torch.tensor([0, 0, 1])
    omega = torch.tensor([0, 2])
    # Omega x Gamma: row 0 (label 0) has 2 similar, row 2 (label 1) has 1: r = 3 / 3
    assert dissimilar_weight(labels[omega], labels, 2).item() == 1.0
    omega = torch.tensor([0, 1])  # 4 similar pairs, 2 dissimilar: r = 2
    r = dissimilar_weight(labels[omega], labels, 2)
    assert r.item() == 2.0
    assert similarity_matrix(labels[omega], labels, r).tolist() == [[1, 1, -2], [1, 1, -2]]
    assert dissimilar_weight(labels[omega], labels, 2, "paper").item() == 1.0


def test_dcc_bitwise_update_matches_brute_force():
    gammas = (0.5, 200.0)
    for seed, similarity, gamma in itertools.product(range(3), ("soft", "paper"), gammas):
        n, bits, classes, labels, omega, u, r, s = _problem(seed, similarity)
        J = lambda v: adsh_objective(v, u, omega, s, bits, gamma).item()  # noqa: E731
        columns = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=n)))  # (32, n)
        g = torch.Generator().manual_seed(100 + seed)
        for start in (torch.randint(0, 2, (n, bits), generator=g).float() * 2 - 1,
                      torch.zeros(n, bits)):  # random +-1, and the released codes' V = 0
            result = dcc_update(start.clone(), u, omega, labels, r, bits, gamma, classes)
            assert set(result.unique().tolist()) <= {-1.0, 1.0}
            for k in range(bits):
                # bit k is updated after bits < k (already updated) and before bits > k
                state = torch.cat([result[:, :k], start[:, k:]], 1)
                values = []
                for column in columns:
                    trial = state.clone()
                    trial[:, k] = column
                    values.append(J(trial))
                chosen = state.clone()
                chosen[:, k] = result[:, k]
                assert math.isclose(J(chosen), min(values), rel_tol=1e-6, abs_tol=1e-4), \
                    (seed, similarity, gamma, k)
            if start.abs().min() == 1:  # from a feasible V the objective never increases
                assert J(result) <= J(start) + 1e-4
                again = dcc_update(result.clone(), u, omega, labels, r, bits, gamma, classes)
                assert J(again) <= J(result) + 1e-4
                # ... and it is never below the global minimum over all 2^(n*bits) V
                every = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=n * bits)))
                every = every.view(-1, n, bits)
                pair = (torch.einsum("mc,vnc->vmn", u, every) - bits * s).pow(2).sum((1, 2))
                quant = (every[:, omega] - u).pow(2).sum((1, 2))
                best = (pair + gamma * quant).min().item()
                assert best <= J(result) + 1e-4


def test_dcc_matches_the_released_codes_formula_with_an_explicit_similarity():
    # V_*k = -sign(2 V_hat U_hat^T U_*k + Q_*k), Q = -2c S^T U - 2 gamma U_bar, S explicit
    n, bits, classes, labels, omega, u, r, s = _problem(7, "soft")
    gamma = 3.0
    start = torch.tensor([[1.0, -1, 1], [-1, -1, 1], [1, 1, 1], [-1, 1, -1], [1, -1, -1]])
    u_bar = torch.zeros(n, bits)
    u_bar[omega] = u
    q = -2 * bits * s.T @ u - 2 * gamma * u_bar
    expected = start.clone()
    for k in range(bits):
        others = [j for j in range(bits) if j != k]
        arg = 2 * expected[:, others] @ (u[:, others].T @ u[:, k]) + q[:, k]
        expected[:, k] = torch.where(arg > 0, -1.0, 1.0)
    result = dcc_update(start.clone(), u, omega, labels, r, bits, gamma, classes)
    assert torch.equal(result, expected)


# -- the Theta-step loss (paper Eq. 3, normalised by n * batch as the authors' code) ---------

def test_loss_by_hand():
    for similarity, pairwise_sum in (("soft", 35.0), ("paper", 15.0)):
        method = make(bits=2, dim=2, classes=2, gamma=10.0, similarity=similarity)
        method.head = nn.Identity()  # u = tanh(x)
        labels = torch.tensor([0, 0, 1])
        method.on_epoch_start(0, Data(torch.zeros(3, 2), labels))
        method.codes = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]])
        method.omega = torch.tensor([0, 1])  # Omega x Gamma: 4 similar, 2 dissimilar -> r = 2
        half = math.atanh(0.5)
        batch = {"inputs": {"pooled": torch.tensor([[half, -half], [half, half]])},
                 "labels": torch.tensor([0, 0]), "indices": torch.tensor([0, 1])}
        losses = method.loss(batch)
        assert set(losses) == {"pairwise", "quantisation"}
        # soft: c S rows = [2, 2, -4]; u0 = (.5, -.5): u0.V = [0, 1, -1] -> (-2, -1, 3)^2 = 14;
        # u1 = (.5, .5): u1.V = [1, 0, 0] -> (-1, -2, 4)^2 = 21; 35 / (n * b = 6).
        # paper: c S rows = [2, 2, -2] -> 4 + 1 + 1 = 6 and 1 + 4 + 4 = 9; 15 / 6
        assert math.isclose(losses["pairwise"].item(), pairwise_sum / 6, rel_tol=1e-6)
        # gamma * (|v0 - u0|^2 + |v1 - u1|^2) = 10 * (2.5 + 2.5), / 6
        assert math.isclose(losses["quantisation"].item(), 50.0 / 6, rel_tol=1e-6)


# -- the sampler hook --------------------------------------------------------------------------

def test_epoch_indices_fixed_within_an_outer_iteration_and_fresh_across():
    method = make(num_samples=20, inner_epochs=3)
    generator = torch.Generator().manual_seed(0)
    draws = [method.epoch_indices(epoch, 50, generator).clone() for epoch in range(9)]
    for omega in draws:
        assert omega.dtype == torch.long and len(omega) == 20
        assert len(set(omega.tolist())) == 20 and 0 <= omega.min() and omega.max() < 50
    for t in range(3):
        assert torch.equal(draws[3 * t], draws[3 * t + 1])
        assert torch.equal(draws[3 * t], draws[3 * t + 2])
    assert not torch.equal(draws[0], draws[3]) and not torch.equal(draws[3], draws[6])
    # asking again inside an outer iteration draws nothing from the generator
    state = generator.get_state()
    assert torch.equal(method.epoch_indices(8, 50, generator), draws[8])
    assert torch.equal(generator.get_state(), state)
    # the same generator seed gives the same Omegas
    again, g2 = make(num_samples=20, inner_epochs=3), torch.Generator().manual_seed(0)
    assert all(torch.equal(again.epoch_indices(e, 50, g2), draws[e]) for e in range(9))
    # a training split smaller than |Omega|: every point, once
    small = make(num_samples=2000).epoch_indices(0, 30, torch.Generator().manual_seed(1))
    assert sorted(small.tolist()) == list(range(30))


def test_the_order_of_the_sampler_and_the_epoch_hook_does_not_matter():
    x, labels = toy(per_class=6)
    results = []
    for indices_first in (False, True):
        torch.manual_seed(0)
        method = make(bits=4, dim=8, classes=4, num_samples=10, inner_epochs=2)
        train_loop(method, Data(x, labels), epochs=6, indices_first=indices_first)
        results.append(method.codes.clone())
    assert torch.equal(results[0], results[1])


# -- the database hook, the contract, devices -------------------------------------------------

def test_encode_database_returns_the_learned_rows():
    x, labels = toy(per_class=5)
    torch.manual_seed(0)
    method = train_loop(make(bits=6, dim=8, classes=4, num_samples=12, inner_epochs=2),
                        Data(x, labels), epochs=4)
    assert method.codes.shape == (len(x), 6)
    assert set(method.codes.unique().tolist()) == {-1.0, 1.0}
    index = torch.tensor([7, 0, 19, 7])
    rows = method.encode_database({"pooled": x[index]}, index)
    assert torch.equal(rows, method.codes[index]) and rows.dtype == torch.float32
    assert method.encode({"pooled": x}).shape == (len(x), 6)
    try:
        method.encode_database({"pooled": x[:1]}, torch.tensor([len(x)]))
    except IndexError:
        pass
    else:
        raise AssertionError("an index outside the training split must be refused")
    # the ablation: same training, the database is left to encode (None)
    assert make(ADSHNetworkDB).encode_database({"pooled": x[:2]}, torch.arange(2)) is None
    assert make(database="network").encode_database({"pooled": x[:2]}, torch.arange(2)) is None
    assert ADSH.learned_database and not ADSHNetworkDB.learned_database
    assert not make(database="network").learned_database


def test_contract_attributes():
    assert issubclass(ADSH, HashMethod) and issubclass(ADSHNetworkDB, ADSH)
    assert (ADSH.name, ADSHNetworkDB.name) == ("adsh", "adsh-netdb")
    assert ADSH.inputs == "pooled" and ADSH.trainable and ADSH.supervised
    config = ADSH.train_config
    assert config["epochs"] == 50 * 3 and config["batch_size"] == 64
    assert config["optimizer"]["type"] == "SGD"
    method = make(bits=12, dim=1280, classes=100)
    assert (method.gamma, method.num_samples, method.inner_epochs) == (200.0, 2000, 3)
    assert (method.similarity, method.database) == ("soft", "learned")


def test_state_dict_round_trip_and_one_device():
    x, labels = toy(per_class=5)
    torch.manual_seed(0)
    data = Data(x, labels)
    method = train_loop(make(bits=4, dim=8, classes=4, num_samples=12, inner_epochs=2),
                        data, epochs=5)
    state = method.state_dict()
    assert {"codes", "omega", "omega_prev"} <= set(state) and "train_labels" not in state
    fresh = make(bits=4, dim=8, classes=4, num_samples=12, inner_epochs=2)
    fresh.load_state_dict(state)  # V and Omega take their trained sizes
    assert torch.equal(fresh.codes, method.codes) and torch.equal(fresh.omega, method.omega)
    assert fresh._rounds == method._rounds
    index = torch.arange(len(x))
    assert torch.equal(fresh.encode_database({"pooled": x}, index),
                       method.encode_database({"pooled": x}, index))

    # everything follows the module: on 'meta' a tensor made on the CPU would raise
    method.to("meta")
    assert {t.device.type for t in [*method.parameters(), *method.buffers()]} == {"meta"}
    meta_data = Data(x.to("meta"), labels.to("meta"))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        chosen = method.epoch_indices(6, len(x), generator)  # a new outer iteration
        method.on_epoch_start(6, meta_data)                  # its V-step
    assert chosen.device.type == "cpu" and method.omega.device.type == "meta"
    assert method._rounds[2] == 2
    index = chosen[:8]
    batch = {"inputs": {"pooled": x[index].to("meta")}, "labels": labels[index].to("meta"),
             "indices": index.to("meta")}
    losses = method.loss(batch)
    assert all(v.device.type == "meta" and v.dim() == 0 for v in losses.values())
    with torch.no_grad():
        method.on_train_end(meta_data)
        rows = method.encode_database({"pooled": x[:3].to("meta")}, torch.arange(3))
    assert rows.device.type == "meta" and rows.shape == (3, 4)


# -- end to end --------------------------------------------------------------------------------

def test_tiny_training_learns_database_codes_that_retrieve():
    # n = 200 with |Omega| = 100: enough pairs per class that the pairwise term, not gamma's
    # pull towards the network outputs (gamma = 200 is meant for n in the 10^4-10^5), shapes V
    x, labels = toy(per_class=50, seed=0)
    queries, query_labels = toy(per_class=10, seed=1)
    torch.manual_seed(0)
    method = train_loop(make(bits=8, dim=8, classes=4, num_samples=100, inner_epochs=2),
                        Data(x, labels), epochs=20)
    with torch.no_grad():
        query_codes = (method.encode({"pooled": queries}) >= 0).numpy()
        db_codes = (method.encode_database({"pooled": x}, torch.arange(len(x))) >= 0).numpy()
    learned = mean_ap(query_codes, db_codes, query_labels.numpy(), labels.numpy())
    rng = np.random.default_rng(0)
    random = mean_ap(rng.integers(0, 2, query_codes.shape), rng.integers(0, 2, db_codes.shape),
                     query_labels.numpy(), labels.numpy())
    assert learned > 0.95, learned
    assert random < 0.5, random
    # the learned codes of a class are close together and far from the other classes'
    distance = (db_codes[:, None, :] != db_codes[None, :, :]).sum(2)
    same = labels.numpy()[:, None] == labels.numpy()[None, :]
    within, between = distance[same].mean(), distance[~same].mean()
    assert within < 1.0 and between > 3.0, (within, between)
