"""DeepSight.

Rieger, Nguyen, Miettinen, Sadeghi, "DeepSight: Mitigating Backdoor Attacks in Federated Learning
Through Deep Model Inspection", NDSS 2022 (arXiv 2201.00763), Algorithm 1. With ``G`` the global
model, ``W_i = G + u_i`` the round's ``n`` local models and ``P`` the number of classes:

1. DDifs (division differences): for each of ``num_seeds`` batches of ``num_samples`` random
   inputs ``x_m`` (uniform pixels in [0, 1] of the data's input shape, normalised like the
   training images), per class ``k``: ``DDif_{i,s,k} = mean_m p_{W_i}(k | x_m) / p_G(k | x_m)``
   with ``p`` the softmax of the logits (computed as ``exp(log p_i - log p_G)`` in float64).
2. NEUPs (normalised energy updates) of the output layer: per output neuron ``p`` the energy
   ``e_p = |db_p| + sum_q |dW_{p,q}|`` of its bias and incoming weights' updates;
   ``NEUP_p = e_p^2 / sum_p' e_p'^2``. Threshold exceedings: ``TE_i = #{p : NEUP_p > xi}``,
   ``xi = max(0.01, 1/P) * max_p NEUP_p``. A backdoor concentrates the update on few output
   neurons, so its model has few exceedings.
3. Labels: model ``i`` is *suspicious* when ``TE_i <= median(TE) / 2`` (the classification
   boundary).
4. Ensemble clustering: HDBSCAN on (a) the pairwise cosine distances of the output-layer bias
   updates, (b) each seed's DDifs, (c) the NEUPs. Each clustering becomes a distance matrix
   (0 within a cluster, 1 otherwise); the DDif matrices are averaged over the seeds, then the
   three are averaged, and HDBSCAN on that merged matrix gives the final clusters.
5. A cluster is accepted when the share of suspicious members is below ``tau`` (1/3); the
   accepted updates are clipped to ``S = median_i ||u_i||`` over *all* ``n`` clients and
   averaged with equal weights.

No code was published by the authors. Compared against two re-implementations:
BackFed (thinh-dao/BackFed, ``backfed/servers/anomaly_detection/deepsight_server.py``) and
FLPoison (vio1etus/FLPoison, ``aggregators/deepsight.py``). Both compute NEUPs, TEs, the bias
cosine distances, the per-seed DDif clusterings and the merged matrix as above. Where they or we
differ:

- Softmax: both divide the raw model outputs (logits for our models) plus an epsilon (1e-30 /
  1e-6); the paper defines DDifs on predicted probabilities, so we take the softmax, and the
  log-space ratio needs no epsilon.
- Noise: both draw ``torch.rand`` from the fixed seeds ``0..num_seeds-1`` (the same inputs every
  round) and feed it unnormalised; we draw fresh inputs per round from
  ``(seed, round, "deepsight", s)`` (drawn on the CPU: the same inputs on any device and
  process count; the rule runs on rank 0) and normalise them like the training data.
- HDBSCAN outliers: BackFed gives an outlier distance 1 to every other model and, in the final
  step, accepts an outlier iff it is not suspicious; FLPoison puts all outliers in one cluster
  (distance 0 to each other) and rejects final outliers. We treat each outlier as its own
  cluster (as BackFed does; the paper's rule then accepts it iff it is not suspicious), at
  distance 0 from itself (BackFed leaves an outlier's diagonal entry at 1).
- Cluster acceptance: current BackFed accepts a cluster when its share of *benign* members is
  >= tau (an older revision had it inverted); FLPoison and we follow the paper (suspicious share
  < tau). BackFed's final HDBSCAN also treats the merged distance matrix as feature vectors; we
  (and FLPoison) cluster it as precomputed distances.
- Threshold exceedings: FLPoison counts ``> xi`` (as we do, "exceed"), BackFed ``>= xi``; an
  older BackFed revision used ``xi = max NEUP / P`` without the 0.01 floor.
- HDBSCAN parameters (the paper does not give them): ``min_cluster_size = 5`` and
  ``min_samples = min_cluster_size`` are the library defaults BackFed uses; FLPoison sets
  ``min_samples = 3`` and ``allow_single_cluster`` in the final step. We clamp ``min_samples``
  to ``n`` (the library refuses more) and expose both.
- BackFed applies the aggregate with a server learning rate of 0.5; we apply it as is (the paper).
- If no cluster is accepted (the paper is silent), the update is zero (BackFed skips the round
  as well) and the metric ``none_accepted`` is 1. A model whose output layer did not change has
  no energy: its NEUPs are uniform (``1/P`` each, ``TE = P``, not suspicious).

The local models are evaluated with the global model's BatchNorm statistics (aggregators see
trainable weights only; see ``fedsim.params``). The forward passes need
``ServerContext.forward`` (set by ``fedsim.simulation``), ``input_shape`` and ``num_classes``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from fedsim.aggregators.base import AggregationResult, Aggregator, RoundContext, ServerContext
from fedsim.aggregators.flame import check_global_weights
from fedsim.aggregators.functional import clip_to_norm, cosine_distances_from_gram, gram64
from fedsim.params import Entry, ParamLayout
from fedsim.runtime.seeding import generator


def output_layer(layout: ParamLayout, num_classes: int, name: Optional[str] = None) -> tuple[Entry, Entry]:
    """``(weight, bias)`` entries of the output layer: the module ``name`` (e.g. ``"fc2"``) or,
    when None, the last module whose ``weight`` is ``[num_classes, q]`` with a ``bias``
    ``[num_classes]``."""
    trainable = [e for e in layout.entries if e.trainable]
    candidates = [e.name[: -len(".weight")] for e in trainable if e.name.endswith(".weight")]
    if name is not None:
        candidates = [name] if f"{name}.weight" in layout else []
    for module in reversed(candidates):
        w, b = f"{module}.weight", f"{module}.bias"
        if b in layout and layout[w].shape[:1] == (num_classes,) and len(layout[w].shape) == 2 \
                and layout[b].shape == (num_classes,):
            return layout[w], layout[b]
    where = f"aggregator.output_layer={name!r} does not name one" if name is not None else \
        "no module has them (set aggregator.output_layer to its name)"
    raise ValueError(f"aggregator: DeepSight needs an output layer with weight [{num_classes}, q] and bias "
                     f"[{num_classes}]; {where}")


def neups(weight_updates: Tensor, bias_updates: Tensor) -> Tensor:
    """``[n, P]`` float64 NEUPs from the output layer's weight ``[n, P, q]`` and bias ``[n, P]``
    updates; rows without energy are uniform."""
    energy = bias_updates.double().abs() + weight_updates.double().abs().sum(dim=2)
    sq = energy**2
    total = sq.sum(dim=1, keepdim=True)
    uniform = torch.full_like(sq, 1.0 / sq.shape[1])
    return torch.where(total > 0, sq / total.clamp_min(1e-300), uniform)


def threshold_exceedings(neup: Tensor, factor: float = 0.01) -> Tensor:
    """``[n]`` int64: per row, how many NEUPs exceed ``max(factor, 1/P) * max NEUP``."""
    xi = max(factor, 1.0 / neup.shape[1]) * neup.max(dim=1, keepdim=True).values
    return (neup > xi).sum(dim=1)


def suspicious_labels(te: Tensor) -> Tensor:
    """``[n]`` bool: ``TE_i <= median(TE) / 2`` (numpy median: the mean of the middle two)."""
    boundary = te.double().quantile(0.5) / 2
    return te.double() <= boundary


@torch.no_grad()
def ddifs(forward, global_weights: Tensor, updates: Tensor, noise: Tensor, batch_size: int) -> Tensor:
    """``[n, P]`` float64 DDifs of the models ``global_weights + updates[i]`` on ``noise``
    ``[N, ...]``: the mean over samples of the per-class ratio of softmax probabilities."""
    def log_probs(weights: Tensor) -> Tensor:
        parts = [torch.log_softmax(forward(weights, noise[s : s + batch_size]).double(), dim=1)
                 for s in range(0, len(noise), batch_size)]
        return torch.cat(parts)

    base = log_probs(global_weights)
    rows = [torch.exp(log_probs(global_weights + u) - base).mean(dim=0) for u in updates]
    return torch.stack(rows)


def hdbscan_labels(x: Tensor, min_cluster_size: int, min_samples: Optional[int],
                   precomputed: bool = False) -> np.ndarray:
    """HDBSCAN labels of the rows of ``x`` (features, or a distance matrix when
    ``precomputed``); -1 marks outliers. With fewer than 2 rows every row is an outlier."""
    n = x.shape[0]
    if n < 2:
        return -np.ones(n, dtype=np.int64)
    from sklearn.cluster import HDBSCAN  # imported here: sklearn costs ~2.7 s at start-up

    ms = min(min_samples if min_samples is not None else min_cluster_size, n)
    return HDBSCAN(min_cluster_size=min_cluster_size, min_samples=ms, copy=True,
                   metric="precomputed" if precomputed else "euclidean").fit_predict(x.double().cpu().numpy())


def cluster_distances(labels: np.ndarray) -> Tensor:
    """``[n, n]`` float64: 0 within a cluster (and on the diagonal), 1 otherwise; every
    outlier (label -1) is a cluster of its own."""
    lab = torch.as_tensor(labels)
    same = (lab[:, None] == lab[None, :]) & (lab[:, None] >= 0)
    same.fill_diagonal_(True)
    return (~same).double()


def singleton_ids(labels: np.ndarray) -> Tensor:
    """Cluster ids in which each outlier is its own cluster (ids >= the largest label + 1)."""
    lab = torch.as_tensor(labels, dtype=torch.long).clone()
    noise = lab < 0
    lab[noise] = int(lab.max().clamp_min(-1)) + 1 + torch.arange(int(noise.sum()))
    return lab


def accept_clusters(clusters: Tensor, suspicious: Tensor, tau: float) -> Tensor:
    """``[n]`` bool: members of the clusters whose share of suspicious members is below ``tau``."""
    accepted = torch.zeros_like(suspicious)
    for c in clusters.unique():
        members = clusters == c
        if float(suspicious[members].double().mean()) < tau:
            accepted |= members
    return accepted


class DeepSight(Aggregator):
    """Label models by threshold exceedings, cluster them on three views, keep the clusters with
    few suspicious models, clip to the median norm and average.

    Args:
        tau: a cluster is accepted when its share of suspicious models is below tau, in (0, 1].
        num_seeds: noise batches for the DDifs (each one HDBSCAN clustering), >= 1.
        num_samples: random inputs per noise batch, >= 1 (the re-implementations use 20000).
        batch_size: inputs per forward pass, >= 1.
        threshold_factor: the floor of the exceedings threshold factor ``max(factor, 1/P)``, in [0, 1).
        min_cluster_size: HDBSCAN's minimum cluster size, >= 2 (5, the library default).
        min_samples: HDBSCAN's ``min_samples`` (None = min_cluster_size), >= 1; clamped to n.
        output_layer: the output layer's module name (None = found from the layout: the last
            layer with weight ``[P, q]`` and bias ``[P]``).
    """

    def __init__(
        self,
        tau: float = 1 / 3,
        num_seeds: int = 3,
        num_samples: int = 20000,
        batch_size: int = 2000,
        threshold_factor: float = 0.01,
        min_cluster_size: int = 5,
        min_samples: Optional[int] = None,
        output_layer: Optional[str] = None,
    ) -> None:
        if not 0 < tau <= 1:
            raise ValueError(f"aggregator.tau must be in (0, 1], got {tau}")
        for field, value in (("num_seeds", num_seeds), ("num_samples", num_samples), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"aggregator.{field} must be an integer >= 1, got {value!r}")
        if not 0 <= threshold_factor < 1:
            raise ValueError(f"aggregator.threshold_factor must be in [0, 1), got {threshold_factor}")
        if not isinstance(min_cluster_size, int) or min_cluster_size < 2:
            raise ValueError(f"aggregator.min_cluster_size must be an integer >= 2, got {min_cluster_size!r}")
        if min_samples is not None and (not isinstance(min_samples, int) or min_samples < 1):
            raise ValueError(f"aggregator.min_samples must be an integer >= 1 or null, got {min_samples!r}")
        self.tau, self.num_seeds, self.num_samples, self.batch_size = tau, num_seeds, num_samples, batch_size
        self.threshold_factor = threshold_factor
        self.min_cluster_size, self.min_samples = min_cluster_size, min_samples
        self.output_layer = output_layer

    def connect(self, ctx: ServerContext) -> None:
        """Fails before training when the run cannot evaluate models or has no output layer."""
        super().connect(ctx)
        if ctx.forward is None or not ctx.input_shape or ctx.num_classes < 2:
            raise ValueError("aggregator: DeepSight needs ServerContext.forward, input_shape and num_classes >= 2 "
                             f"(got forward={'set' if ctx.forward else None}, input_shape={ctx.input_shape}, "
                             f"num_classes={ctx.num_classes})")
        self.weight_entry, self.bias_entry = output_layer(ctx.layout, ctx.num_classes, self.output_layer)

    def noise(self, seed: int, round: int, s: int) -> Tensor:
        """Noise batch ``s`` of round ``round``: ``[num_samples, *input_shape]`` uniform in [0, 1]."""
        g = generator(seed, round, "deepsight", s)
        return torch.rand((self.num_samples, *self.ctx.input_shape), generator=g)

    def aggregate(self, updates: Tensor, weights: Tensor, ctx: RoundContext) -> AggregationResult:
        n, device = updates.shape[0], updates.device
        w_e, b_e = self.weight_entry, self.bias_entry
        g = check_global_weights(ctx, updates, "DeepSight")
        bias = updates[:, b_e.slice]  # [n, P]
        neup = neups(updates[:, w_e.slice].reshape(n, *w_e.shape), bias)
        te = threshold_exceedings(neup, self.threshold_factor)
        suspicious = suspicious_labels(te)

        mcs, ms = self.min_cluster_size, self.min_samples
        cosine = cosine_distances_from_gram(gram64(bias))
        views = [cluster_distances(hdbscan_labels(cosine, mcs, ms, precomputed=True)),
                 cluster_distances(hdbscan_labels(neup, mcs, ms))]
        ddif_views = []
        for s in range(self.num_seeds):
            x = self.noise(self.ctx.seed, ctx.round, s).to(device)
            ddif_views.append(cluster_distances(hdbscan_labels(ddifs(self.ctx.forward, g, updates, x,
                                                                     self.batch_size), mcs, ms)))
        merged = (torch.stack(ddif_views).mean(0) + views[0] + views[1]) / 3
        final = hdbscan_labels(merged, mcs, ms, precomputed=True)
        clusters = singleton_ids(final)
        accepted = accept_clusters(clusters, suspicious, self.tau).to(device)

        bound = torch.linalg.vector_norm(updates, dim=1, dtype=torch.float64).quantile(0.5)
        if accepted.any():
            clipped, _ = clip_to_norm(updates[accepted], bound)
            update = clipped.mean(dim=0)
        else:
            update = torch.zeros_like(updates[0])
        metrics = {
            "clip_bound": float(bound),
            "accepted_fraction": float(accepted.float().mean()),
            "suspicious": int(suspicious.sum()),
            "te_min": int(te.min()),  # the labels' inputs: a model is suspicious iff TE <= te_median / 2
            "te_median": float(te.double().quantile(0.5)),
            "clusters": int(len(np.unique(final[final >= 0]))),
            "outliers": int((final < 0).sum()),
            "none_accepted": float(not accepted.any()),
        }
        return AggregationResult(update, accepted=accepted, metrics=metrics)
