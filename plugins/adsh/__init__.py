"""ADSH: Asymmetric Deep Supervised Hashing (Qing-Yuan Jiang & Wu-Jun Li, AAAI 2018,
arXiv:1707.08325; authors' code: github.com/jiangqy/ADSH-AAAI2018, MatConvNet and PyTorch).

ADSH treats queries and the database asymmetrically: the database codes V (one row per
training sample, V in {-1,+1}^{n x c}, c = bits) are a learned variable, and only queries
go through a network F. With Gamma = all n training points, Omega a subset of m of them
sampled afresh every outer iteration, u_i = tanh(F(x_i; Theta)) and S_ij the similarity of
points i and j, it minimises (paper Eq. 3)

    J(Theta, V) = sum_{i in Omega} sum_{j in Gamma} [u_i^T v_j - c S_ij]^2
                  + gamma * sum_{i in Omega} ||v_i - u_i||^2

by alternating two steps, T_out times (paper Algorithm 1):

* Theta-step, V fixed: T_in epochs of mini-batch SGD over Omega (the gradient of paper
  Eq. 4, obtained here by autograd through tanh). ``loss(batch)`` returns the two terms for
  the batch rows i, each divided by n * batch size (the authors' code's normalisation; a
  constant scale, so the balance of the two terms is the paper's).
* V-step, Theta fixed: with U = tanh(F(x_Omega)) (m x c), U_bar (n x c) = U on the rows of
  Omega and 0 elsewhere, and Q = -2c S^T U - 2 gamma U_bar, J(V) = ||U V^T||_F^2 + tr(V Q^T)
  + const (paper Eq. 5); for one column (bit) k with the others fixed it is linear in V_*k,
  so (paper Eqs. 6-7) V_*k = -sign(2 V_hat_k U_hat_k^T U_*k + Q_*k), where V_hat_k and U_hat_k
  are V and U without column k. One cyclic pass over the c bits per outer iteration
  (discrete cyclic coordinate descent), as in the paper and both released codes.
  ``dcc_update`` computes S^T U from per-class sums of U (exact for single-label data), so
  the m x n similarity matrix is never built.

Queries: b_q = sign(F(q; Theta)) (out-of-sample extension); ``encode`` returns
tanh(F(q)) and the harness binarises it. Database: the learned V rows, through
``encode_database(inputs, indices)`` (the harness calls it when the database is the
training split). ``ADSHNetworkDB`` (``adsh-netdb``, or ``database="network"``) trains the
same way but lets the harness encode the database with the network (an ablation: is
learning V directly better than encoding the database?); its ``encode_database`` returns
None.

Harness seams used
------------------
* ``epoch_indices(epoch, num_train, generator)``: one outer iteration = ``inner_epochs``
  harness epochs; a fresh Omega (m distinct training positions, drawn with the harness's
  generator) at the first epoch of each outer iteration, the same Omega for the others.
* ``on_epoch_start(epoch, data)``: at epoch 0, V = 0 (as in both released codes) and the
  training labels are kept; at the first epoch of outer iteration t >= 1, the V-step of
  outer iteration t - 1 (with its Omega and the network as it is after its T_in epochs).
* ``on_train_end(data)``: the V-step still pending for the last outer iteration of the
  (possibly validation-restored) state.
V (``codes``) and the current and previous Omega are persistent buffers (state_dict, module
device); the outer-iteration bookkeeping is the module's extra state. Without an
``epoch_indices`` call (a harness without the sampler), an outer iteration trains on every
point and its V-step uses Omega = Gamma.

Defaults and their sources
--------------------------
* gamma = 200, m = |Omega| = 2000 (min(2000, n) when the training split is smaller),
  T_out = 50 outer iterations, T_in = 3 epochs each: the paper's experimental settings
  and both released codes (``ADSH_demo.m``: outIter 50, maxIter 3, gamma 200, numSample 2000;
  ``ADSH_CIFAR_10.py``: --max-iter 50 --epochs 3 --gamma 200 --num-samples 2000). So
  ``train_config["epochs"] = 150`` (= T_out * T_in); a different epoch count E means
  ceil(E / T_in) outer iterations. Not scaled down for the CPU: m = 2000 keeps an epoch at
  ~32 batches.
* batch size 64: both released codes.
* SGD, lr 1e-2, momentum 0.9, weight decay 5e-4: chosen on validation (a DEPARTURE from the
  authors' lr 1e-3 without momentum, their PyTorch code's ResNet-50 fine-tuning recipe; the
  MatConvNet code uses lr logspace(-4, -6) over the 150 epochs for CNN-F; weight decay 5e-4
  in both). Selection: cub100 train split, 20% of each class held out as queries (seed 0),
  database = the rest, frozen EfficientNet-Lite0 pooled features, learned-database mAP at
  12 / 48 bits, among lr 1e-3, 1e-2, 3e-2 and 1e-2 + momentum 0.9 (the numbers are in the
  issue #16 note).
* similarity ``"soft"``: S_ij = 1 for a shared label and -r otherwise, with
  r = (#similar pairs) / (#dissimilar pairs) of the outer iteration's Omega x Gamma matrix.
  This is the authors' code's "soft constraint" (both versions), a DEPARTURE from the
  paper's S_ij in {+1, -1}; the paper's numbers come from that code (its PyTorch README:
  "the results for paper is based on MatConvNet version", which has it). With 100-200
  fine-grained classes ~99% of pairs are dissimilar, and the {+1, -1} target drives
  different classes to anti-correlated codes, which c bits cannot give every pair of
  classes at once; -r (~0.01) asks for nearly orthogonal ones. ``similarity="paper"`` gives
  S in {+1, -1} (r = 1); on the validation split above its codes collapse.
* ``database="learned"``: the paper's protocol (database = learned V).

Departures
----------
* Frozen regime: F is the project's two-layer head on the pooled 1280-d backbone feature
  (1280 -> 1024 -> bits, ReLU; ``hidden`` = 1024), trained alone, instead of a CNN
  (CNN-F in the paper, ResNet-50 in the authors' PyTorch code) fine-tuned end to end.
* Similarity: the authors' soft constraint (above) instead of the paper's {+1, -1}.
* No learning-rate decay: the harness has no schedule; the authors' PyTorch code divides
  the lr by 10 after outer iterations 10, 20, 30, 40 (the MatConvNet code decays it
  log-linearly).
* The V-step recomputes U with the network after its T_in epochs (eval mode, no
  gradient), as the alternating minimisation prescribes; the released codes reuse the
  outputs stored while training (each row from the last time its batch was seen, before
  that step's update). The MatConvNet code also uses sign(U) instead of U in the S^T U term
  of Q; this follows the paper and the PyTorch code (U).
* A tie in the V-step (argument of -sign equal to 0: -1 and +1 give the same objective)
  gives +1, so V stays in {-1, +1}; the released codes' sign(0) = 0 would leave a 0 in V.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from benchmark.method import HashMethod, pooled_mlp_head
from registry import hookimpl

SIMILARITIES = ("soft", "paper")
DATABASES = ("learned", "network")


def dissimilar_weight(omega_labels: torch.Tensor, labels: torch.Tensor, num_classes: int,
                      similarity: str = "soft") -> torch.Tensor:
    """r, with S_ij = 1 for a shared label and -r otherwise (0-d tensor on labels' device).

    ``"soft"`` (authors' code): r = #similar / #dissimilar pairs of Omega x Gamma
    (Omega's labels ``omega_labels``, Gamma's ``labels``); ``"paper"``: r = 1."""
    if similarity == "paper":
        return torch.ones((), device=labels.device)
    if similarity != "soft":
        raise ValueError(f"similarity must be one of {SIMILARITIES}, not {similarity!r}")
    counts = torch.zeros(num_classes, device=labels.device).index_add_(
        0, labels, torch.ones(labels.shape, device=labels.device))
    similar = counts[omega_labels].sum()
    dissimilar = omega_labels.numel() * labels.numel() - similar
    return similar / dissimilar.clamp_min(1.0)


def similarity_matrix(row_labels: torch.Tensor, labels: torch.Tensor, r) -> torch.Tensor:
    """S (rows x n): 1 where the labels match, -r elsewhere."""
    same = (row_labels[:, None] == labels[None, :]).float()
    return same * (1 + r) - r


def adsh_loss(u, codes, similarity, rows, bits: int, gamma: float = 200.0):
    """(pairwise, quantisation) terms of paper Eq. 3 for the batch rows ``rows`` (training
    positions, with relaxed codes ``u`` = tanh(F(x)), (b, c)) against all database codes
    ``codes`` (n, c), with their similarity rows ``similarity`` (b, n); both divided by
    n * b as in the authors' code."""
    scale = codes.shape[0] * u.shape[0]
    pairwise = (u @ codes.T - bits * similarity).pow(2).sum() / scale
    quantisation = gamma * (codes[rows] - u).pow(2).sum() / scale
    return pairwise, quantisation


def adsh_objective(codes, u, omega, similarity, bits: int, gamma: float = 200.0):
    """J of paper Eq. 3 (the plain sums, no normalisation) with an explicit similarity
    matrix (m, n): for checks; training never builds the m x n matrix."""
    return ((u @ codes.T - bits * similarity).pow(2).sum()
            + gamma * (codes[omega] - u).pow(2).sum())


def dcc_update(codes, u, omega, labels, r, bits: int, gamma: float, num_classes: int,
               sweeps: int = 1) -> torch.Tensor:
    """V-step (paper Eqs. 5-7): ``sweeps`` cyclic passes over the bits, each column set to
    its exact minimiser given the others, V_*k = -sign(2 V_hat_k U_hat_k^T U_*k + Q_*k),
    Q = -2c S^T U - 2 gamma U_bar. Updates ``codes`` (n, c) in place and returns it.

    S^T U is formed without S: (S^T U)_j = (1 + r) sum_{i in Omega, y_i = y_j} u_i
    - r sum_{i in Omega} u_i, from per-class sums of U (single-label data)."""
    u = u.to(codes.dtype)
    class_sums = torch.zeros(num_classes, u.shape[1], dtype=u.dtype, device=u.device)
    class_sums.index_add_(0, labels[omega], u)
    su = (1 + r) * class_sums[labels] - r * u.sum(0, keepdim=True)
    q = -2 * bits * su
    q[omega] -= 2 * gamma * u
    gram = u.T @ u  # (c, c): U_hat_k^T U_*k is column k of it without row k
    for _ in range(sweeps):
        for k in range(codes.shape[1]):
            coupling = codes @ gram[:, k] - codes[:, k] * gram[k, k]  # V_hat_k U_hat_k^T U_*k
            codes[:, k] = torch.where(2 * coupling + q[:, k] > 0, -1.0, 1.0)  # -sign(.)
    return codes


class ADSH(HashMethod):
    name = "adsh"
    supervised = True
    trainable = True
    inputs = "pooled"
    #: database codes are learned variables (encode_database), not network outputs
    learned_database: ClassVar[bool] = True
    #: T_out * T_in = 50 * 3 epochs and batch 64 (paper, authors' code); SGD lr 1e-2 +
    #: momentum 0.9 chosen on validation, weight decay 5e-4 (authors' code)
    train_config = {"epochs": 150, "batch_size": 64,
                    "optimizer": {"type": "SGD", "lr": 1e-2, "momentum": 0.9,
                                  "weight_decay": 5e-4}}
    search_space = {"lr": ("log", 1e-3, 1e-1), "gamma": ("log", 10.0, 1000.0)}

    def __init__(self, bits, num_classes, input_shapes, gamma: float = 200.0,
                 num_samples: int = 2000, inner_epochs: int = 3, similarity: str = "soft",
                 database: str = "learned", hidden: int = 1024):
        super().__init__(bits, num_classes, input_shapes)
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, not {similarity!r}")
        if database not in DATABASES:
            raise ValueError(f"database must be one of {DATABASES}, not {database!r}")
        if num_samples < 1 or inner_epochs < 1:
            raise ValueError("num_samples and inner_epochs must be positive")
        self.gamma, self.num_samples, self.inner_epochs = float(gamma), num_samples, inner_epochs
        self.similarity, self.database = similarity, database
        self.learned_database = database == "learned"
        self.head = nn.Sequential(*pooled_mlp_head(input_shapes, bits, hidden))
        # V (n, c), learned; n is known at the first on_epoch_start
        self.register_buffer("codes", torch.zeros(0, bits))
        # Omega of the latest and of the previous outer iteration (training positions)
        self.register_buffer("omega", torch.zeros(0, dtype=torch.long))
        self.register_buffer("omega_prev", torch.zeros(0, dtype=torch.long))
        # training labels (Gamma's), training state only: not saved with the model
        self.register_buffer("train_labels", torch.zeros(0, dtype=torch.long), persistent=False)
        # outer iteration of ``omega``, of ``omega_prev``, the last one whose V-step is done,
        # the latest one started by on_epoch_start (the module's extra state)
        self._rounds = [-1, -1, -1, -1]

    # -- the network (queries) -------------------------------------------------------
    def encode(self, inputs):
        return torch.tanh(self.head(inputs["pooled"]))

    def encode_database(self, inputs, indices):
        """Learned V rows (+-1 floats) of the training positions ``indices``; None when the
        database is encoded by the network (``database="network"``)."""
        if not self.learned_database:
            return None
        if self.codes.shape[0] == 0:
            raise RuntimeError("ADSH has no learned database codes yet (train it first)")
        indices = torch.as_tensor(indices, dtype=torch.long).to(self.codes.device)
        if indices.numel() and self.codes.device.type != "meta" and (
                int(indices.min()) < 0 or int(indices.max()) >= self.codes.shape[0]):
            raise IndexError(f"database indices outside 0..{self.codes.shape[0] - 1}: ADSH "
                             "learns codes only for the training split")
        return self.codes[indices].clone()

    # -- sampling of Omega -----------------------------------------------------------
    def epoch_indices(self, epoch: int, num_train: int, generator: torch.Generator):
        """Omega for this epoch: drawn afresh (m distinct positions, with ``generator``) at
        the first call of each outer iteration (epochs t*T_in .. (t+1)*T_in - 1), then
        returned unchanged for the rest of it."""
        round_ = epoch // self.inner_epochs
        if round_ != self._rounds[0] or self.omega.numel() == 0:
            m = min(self.num_samples, num_train)
            drawn = torch.randperm(num_train, generator=generator, device=generator.device)[:m]
            if self._rounds[0] >= 0 and self._rounds[0] != round_:
                self.omega_prev = self.omega
                self._rounds[1] = self._rounds[0]
            self.omega = drawn.to(self.codes.device)
            self._rounds[0] = round_
            return drawn
        return self.omega.to(generator.device)

    def _omega_of(self, round_: int, n: int) -> torch.Tensor:
        if self._rounds[0] == round_ and self.omega.numel():
            return self.omega
        if self._rounds[1] == round_ and self.omega_prev.numel():
            return self.omega_prev
        return torch.arange(n, device=self.codes.device)  # no sampler: Omega = Gamma

    def _current_omega(self) -> torch.Tensor:
        return self.omega if self.omega.numel() else torch.arange(
            len(self.train_labels), device=self.codes.device)

    # -- the V-step --------------------------------------------------------------------
    def _ensure_state(self, data) -> None:
        n, device = len(data), self.codes.device
        if self.codes.shape[0] != n:
            self.codes = torch.zeros(n, self.bits, device=device)  # as both released codes
        if self.train_labels.shape[0] != n:
            self.train_labels = data.labels.to(device=device, dtype=torch.long)

    def _outputs(self, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        device = self.codes.device
        return torch.cat([self.encode({"pooled": x[s:s + chunk].to(device)})
                          for s in range(0, len(x), chunk)]) if len(x) else \
            torch.zeros(0, self.bits, device=device)

    @torch.no_grad()
    def _v_step(self, round_: int, data) -> None:
        omega = self._omega_of(round_, len(data))
        pooled = data.inputs["pooled"]
        u = self._outputs(pooled[omega.to(pooled.device)])
        labels = self.train_labels
        r = dissimilar_weight(labels[omega], labels, self.num_classes, self.similarity)
        dcc_update(self.codes, u, omega, labels, r, self.bits, self.gamma, self.num_classes)
        self._rounds[2] = round_

    def on_epoch_start(self, epoch, data):
        self._ensure_state(data)
        round_ = epoch // self.inner_epochs
        self._rounds[3] = round_
        if epoch % self.inner_epochs == 0 and round_ > 0 and self._rounds[2] < round_ - 1:
            self._v_step(round_ - 1, data)

    def on_train_end(self, data):
        self._ensure_state(data)
        last = max(self._rounds[0], self._rounds[3], 0)  # the latest outer iteration trained
        if self._rounds[2] < last:
            self._v_step(last, data)

    # -- the Theta-step ----------------------------------------------------------------
    def loss(self, batch):
        u = self.encode(batch["inputs"])
        device = self.codes.device
        rows = batch["indices"].to(device)
        labels = self.train_labels
        omega = self._current_omega()
        r = dissimilar_weight(labels[omega], labels, self.num_classes, self.similarity)
        similarity = similarity_matrix(batch["labels"].to(device), labels, r)
        pairwise, quantisation = adsh_loss(u, self.codes, similarity, rows, self.bits,
                                           self.gamma)
        return {"pairwise": pairwise, "quantisation": quantisation}

    # -- persistence ---------------------------------------------------------------------
    def get_extra_state(self):
        return torch.tensor(self._rounds, dtype=torch.long)

    def set_extra_state(self, state):
        self._rounds = [int(v) for v in torch.as_tensor(state).tolist()]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # V and Omega have data-dependent sizes: take the incoming ones (e.g. a trained
        # state loaded into a freshly constructed module)
        for name in ("codes", "omega", "omega_prev"):
            incoming = state_dict.get(prefix + name)
            current = getattr(self, name)
            if incoming is not None and incoming.shape != current.shape:
                setattr(self, name, torch.empty(incoming.shape, dtype=current.dtype,
                                                device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ADSHNetworkDB(ADSH):
    """ADSH trained as usual, database encoded by the network (``encode_database`` returns
    None: the harness falls back to ``encode``). The ablation of learning V directly."""
    name = "adsh-netdb"
    learned_database: ClassVar[bool] = False

    def __init__(self, bits, num_classes, input_shapes, database: str = "network", **hparams):
        super().__init__(bits, num_classes, input_shapes, database=database, **hparams)


@hookimpl
def benchmark_methods():
    return [ADSH, ADSHNetworkDB]
