"""The federated round loop (SPMD: every rank runs the same loop).

    for round r:
      SAMPLE     cohort = f(seed, r), identical on every rank, no communication
      SHARD      my positions = cohort positions [rank::world]
      TRAIN      each of my clients: update = local_train(global, data_c, (seed, r, c))
      GATHER     every client's row [client_id, samples, loss, update] reaches rank 0
      AGGREGATE  rank 0: drop non-finite rows, rule on the weights, sample-weighted mean of buffers
      BROADCAST  the new global model from rank 0
      EVALUATE   clean ACC / loss / per-class ACC, aux ACC, ASR; each rank a shard, counts summed
      LOG        rank 0: metrics.csv / W&B, progress bar, atomic checkpoint
    after the last round: callbacks' on_train_end (FLAIN and other post-training defenses)

The plug-ins see frozen contexts, never this class: an aggregator ``ServerContext`` once at
``connect`` (layout, device, the server's auxiliary set, the clients' settings, a model factory:
FLTrust trains its server model from them) and a ``RoundContext`` per round; an attack
``AttackContext`` and a ``ClientContext`` per malicious client; a post-training defense a
``PostTrainContext`` (``posttrain_context``, built once after the last round). Detection scores
come from ``fedsim.metrics.detection``; the checkpoint's schema and resume checks live in
``fedsim.runtime.checkpoint``.

Rows are sorted by client id before aggregation, so the aggregator sees the same matrix in the
same order for any number of processes: 1 process and N processes give the same model.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from fedsim.aggregators.base import Aggregator, RoundContext, ServerContext
from fedsim.aggregators.functional import drop_nonfinite, weighted_mean
from fedsim.attacks.base import AttackContext, ClientContext
from fedsim.callbacks import Callback
from fedsim.clients import ClientConfig, local_train
from fedsim.loggers import LoggerConfig, RunLogger, utc_now
from fedsim.metrics import (clean_counts, detection, eval_batch_size, ordered_sum, rate, shard_batches,
                            summarize_clean, target_hits)
from fedsim.params import ParamLayout
from fedsim.posttrain import PostTrainContext
from fedsim.runtime import dist
from fedsim.runtime.checkpoint import checkpoint_state, resume_state, save_atomic
from fedsim.runtime.seeding import generator
from fedsim.schema import AboveOne, NonNegativeInt, PositiveInt, UnitIntervalOpenLow

META = 3  # columns before the update in a gathered row: client id, samples, loss


@dataclass
class FedConfig:
    """The federation.

    Args:
        num_clients: clients in the population.
        rounds: communication rounds.
        clients_per_round: cohort size per round (exclusive with fraction).
        fraction: cohort size as a fraction of num_clients, in (0, 1] (exclusive with clients_per_round).
        eval_every: evaluate every this many rounds (the last round is always evaluated).
        checkpoint_every: write the checkpoint every this many rounds (0 = only at the end).
        aux_per_class: samples per class in the server's auxiliary clean set (FLAIN's default 80).
        norm_factor: an update whose L2 norm exceeds this many times the round's median update
            norm is reported (metric ``updates_over_bound``, a warning); > 1.
        norm_guard: also drop such updates before aggregation (like non-finite ones).
    """

    num_clients: PositiveInt = 100
    rounds: NonNegativeInt = 10
    clients_per_round: Optional[PositiveInt] = None
    fraction: Optional[UnitIntervalOpenLow] = None
    eval_every: PositiveInt = 1
    checkpoint_every: NonNegativeInt = 1
    aux_per_class: NonNegativeInt = 80
    norm_factor: AboveOne = 100.0
    norm_guard: bool = False

    def __post_init__(self) -> None:
        if self.num_clients < 1:
            raise ValueError(f"fed.num_clients must be >= 1, got {self.num_clients}")
        if self.rounds < 0:
            raise ValueError(f"fed.rounds must be >= 0, got {self.rounds}")
        if self.clients_per_round is not None and self.fraction is not None:
            raise ValueError("fed.clients_per_round and fed.fraction are exclusive: set one of them")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError(f"fed.fraction must be in (0, 1], got {self.fraction}")
        if self.clients_per_round is not None and not 1 <= self.clients_per_round <= self.num_clients:
            raise ValueError(f"fed.clients_per_round must be in [1, fed.num_clients={self.num_clients}], "
                             f"got {self.clients_per_round}")
        if self.eval_every < 1:
            raise ValueError(f"fed.eval_every must be >= 1, got {self.eval_every}")
        if self.checkpoint_every < 0:
            raise ValueError(f"fed.checkpoint_every must be >= 0 (0 = only at the end), got {self.checkpoint_every}")
        if self.aux_per_class < 0:
            raise ValueError(f"fed.aux_per_class must be >= 0, got {self.aux_per_class}")
        if not self.norm_factor > 1:
            raise ValueError(f"fed.norm_factor must be > 1, got {self.norm_factor}")

    @property
    def cohort_size(self) -> int:
        if self.clients_per_round is not None:
            return self.clients_per_round
        if self.fraction is not None:
            return max(1, round(self.fraction * self.num_clients))
        return min(10, self.num_clients)


@dataclass(frozen=True)
class SimulationConfig:
    fed: FedConfig
    client: ClientConfig
    seed: int
    run_dir: Path
    # The configuration that determines the training trajectory (top-level key -> plain value),
    # saved in checkpoints; resuming with a different one is refused
    # (``fedsim.runtime.checkpoint.trajectory`` / ``check_fingerprint``).
    fingerprint: Optional[dict] = None


def sample_cohort(seed: int, round: int, num_clients: int, size: int) -> list[int]:
    """Sorted client ids of round ``round``'s cohort: a pure function of (seed, round)."""
    perm = torch.randperm(num_clients, generator=generator(seed, round, "cohort"))
    return sorted(perm[:size].tolist())


class Simulation:
    """Runs federated training on every rank; see the module docstring for the round."""

    def __init__(self, fabric, data, model: nn.Module, config: SimulationConfig, aggregator: Aggregator,
                 attack=None, callbacks: Optional[list[Callback]] = None, logger: Optional[RunLogger] = None) -> None:
        self.fabric, self.config = fabric, config
        self.fed, self.client_config = config.fed, config.client
        self.device = fabric.device
        self.data = data.to(self.device)
        self.model = model.to(self.device)
        self.layout = ParamLayout(self.model)
        self.aggregator, self.attack = aggregator, attack
        self.callbacks = callbacks or []
        self.run_dir = Path(config.run_dir)
        self.logger = logger or RunLogger(LoggerConfig(), self.run_dir, fabric.is_global_zero)
        self.theta0 = self.layout.flatten(self.model)  # initial global model (FLAIN needs it)
        self.global_params = self.theta0.clone()
        self.prev_global: Optional[Tensor] = None
        self.trained_params = self.global_params
        self.start_round = 0
        self.rounds = 0
        self.summary: dict[str, Any] = {}
        self.asr_set = None
        self.train_seconds = 0.0  # summed round time (sampling to broadcast), across resumes
        self.last_eval: tuple[int, dict[str, Any]] = (-1, {})  # (rounds trained, evaluate() result)

    # ----------------------------------------------------------------- setup
    def normalize(self, x: Tensor) -> Tensor:
        return self.data.normalize(x)

    def setup(self, resume: Optional[str] = None) -> None:
        """Connects the components (facts known only now) and restores a checkpoint."""
        fed = self.fed
        need = self.aggregator.min_clients()
        if fed.cohort_size < need:
            raise ValueError(f"aggregator: {type(self.aggregator).__name__} with these settings needs >= {need} "
                             f"clients per round, fed.cohort_size is {fed.cohort_size}; lower aggregator.f / "
                             f"aggregator.threshold or raise fed.clients_per_round")
        self.aggregator.connect(ServerContext(
            self.layout, self.device, fed.num_clients, self.config.seed, fed.aux_per_class,
            aux_x=self.data.aux.x, aux_y=self.data.aux.y, normalize=self.normalize, client=self.client_config,
            make_model=lambda: copy.deepcopy(self.model), forward=self._forward,
            input_shape=tuple(self.data.image_shape), num_classes=self.data.num_classes))
        if self.attack is not None:
            self.attack.connect(AttackContext(
                image_shape=tuple(self.data.image_shape), num_classes=self.data.num_classes,
                num_clients=fed.num_clients, cohort_size=fed.cohort_size, rounds=fed.rounds,
                seed=self.config.seed, layout=self.layout, server_lr=getattr(self.aggregator, "server_lr", 1.0)))
            test_set = self.attack.test_set(self.data.test.x, self.data.test.y)
            self.asr_set = tuple(t.to(self.device) for t in test_set) if test_set is not None else None
        wandb_id = None
        if resume is not None:
            state = resume_state(resume, seed=self.config.seed, fingerprint=self.config.fingerprint,
                                 numel=self.layout.numel, dtype=self.global_params.dtype, rounds=fed.rounds)
            self.global_params = state["global_params"].to(self.device)
            self.theta0 = state["theta0"].to(self.device)
            self.prev_global = state["prev_global"].to(self.device) if state.get("prev_global") is not None else None
            self.start_round = int(state["round"])
            self.aggregator.load_state_dict(state.get("aggregator", {}))
            if self.attack is not None:
                self.attack.load_state_dict(state.get("attack", {}))
            wandb_id = state.get("wandb_id")
            self.train_seconds = float(state.get("train_seconds", 0.0))
        self.rounds = self.start_round
        self.logger.start(self.start_round, wandb_id)
        self._set_up = True

    # ----------------------------------------------------------------- the loop
    def run(self, resume: Optional[str] = None) -> dict[str, Any]:
        fabric, fed = self.fabric, self.fed
        if not getattr(self, "_set_up", False):
            self.setup(resume)
        fabric.call("on_train_start", fabric, self)
        bar = _progress(fabric, self.start_round, fed.rounds)
        metrics: dict[str, Any] = {}
        for r in range(self.start_round, fed.rounds):
            dist.set_stage(f"round {r}")  # named by a collective that times out (rank_timeout)
            start = time.perf_counter()
            # SAMPLE: the same cohort and attackers on every rank, no communication
            cohort = sample_cohort(self.config.seed, r, fed.num_clients, fed.cohort_size)
            malicious = self._malicious(r, cohort)
            # SHARD + TRAIN: this rank's positions of the cohort
            mine = dist.shard(list(range(len(cohort))), fabric.global_rank, fabric.world_size)
            rows = self._train_clients(r, cohort, malicious, mine)
            # GATHER to the coordinator: rows of all clients, sorted by client id (= cohort order)
            max_rows = math.ceil(len(cohort) / fabric.world_size)
            gathered = dist.gather_rows(fabric, rows, max_rows)
            gathered = gathered[gathered[:, 0].argsort()]
            # AGGREGATE on the coordinator, then BROADCAST (an error there stops every rank)
            new_global, metrics = dist.run_on_zero(fabric, lambda: self._aggregate(r, gathered, malicious),
                                                   (torch.empty_like(self.global_params), {}))
            new_global = dist.broadcast(fabric, new_global)
            self.prev_global, self.global_params = self.global_params, new_global
            self.rounds = r + 1
            # EVALUATE (collective) and LOG (rank 0)
            metrics["round_seconds"] = time.perf_counter() - start
            self.train_seconds += metrics["round_seconds"]
            metrics["malicious_in_cohort"] = int(malicious.sum())
            if (r + 1) % fed.eval_every == 0 or r + 1 == fed.rounds:
                self.last_eval = (self.rounds, self.evaluate(self.global_params))
                metrics.update(self._scalars(self.last_eval[1]))
            self.logger.log_metrics(metrics, step=r)
            if fed.checkpoint_every and (r + 1) % fed.checkpoint_every == 0:
                self.save_checkpoint()
            fabric.call("on_round_end", fabric, self, r, metrics)
            _advance(bar, metrics)
        if bar is not None:
            bar.close()
        dist.set_stage("post-training")
        return self._finish()

    def _malicious(self, r: int, cohort: list[int]) -> Tensor:
        if self.attack is None:
            return torch.zeros(len(cohort), dtype=torch.bool)
        return self.attack.malicious(r, torch.tensor(cohort, dtype=torch.long)).cpu()

    def _train_clients(self, r: int, cohort: list[int], malicious: Tensor, mine: list[int]) -> Tensor:
        rows = torch.empty(len(mine), META + self.layout.numel, device=self.device)
        prev_update = None
        if self.prev_global is not None and bool(malicious.any()):  # only attackers read it
            prev_update = (self.global_params - self.prev_global)[: self.layout.num_weights]
        attacker_rank = malicious.long().cumsum(0) - 1
        for i, pos in enumerate(mine):
            cid = cohort[pos]
            split = self.data.client(cid)
            attack = ctx = None
            if malicious[pos]:
                attack = self.attack
                ctx = ClientContext(
                    round=r, client_id=cid, global_weights=self.global_params[: self.layout.num_weights],
                    prev_global_update=prev_update, num_samples=len(split.y), cohort_size=len(cohort),
                    attacker_rank=int(attacker_rank[pos]), num_attackers=int(malicious.sum()))
            res = local_train(model=self.model, layout=self.layout, global_params=self.global_params, x=split.x,
                              y=split.y, config=self.client_config, seed=self.config.seed, round=r, client_id=cid,
                              normalize=self.normalize, attack=attack, attack_ctx=ctx)
            rows[i, 0], rows[i, 1], rows[i, 2] = cid, res.num_samples, res.loss
            rows[i, META:] = res.update
        return rows

    def _aggregate(self, r: int, rows: Tensor, malicious: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """Rank 0: drop non-finite rows, apply the rule to the weights, average the buffers."""
        metrics: dict[str, Any] = {"train_loss": float(weighted_mean(rows[:, 2:3], rows[:, 1])[0])}
        w = self.layout.num_weights
        updates, weights, keep = drop_nonfinite(rows[:, META:], rows[:, 1])
        metrics["dropped_nonfinite"] = int((~keep).sum())
        keep = self._check_norms(r, rows, updates, keep, metrics)
        updates, weights = rows[keep][:, META:], rows[keep][:, 1]
        need = self.aggregator.min_clients()
        if len(weights) < need:  # documented fallback: keep the global model for this round
            print(f"warning: round {r}: {len(weights)} usable updates, {type(self.aggregator).__name__} needs "
                  f">= {need}; the global model is kept for this round", flush=True)
            metrics["skipped_round"] = 1
            self.logger.log_round_record({"round": r, "clients": rows[:, 0].long().tolist(),
                                          "malicious": rows[:, 0].long()[malicious.to(rows.device)].tolist(),
                                          "dropped": rows[:, 0].long()[~keep].tolist(), "skipped": True})
            return self.global_params.clone(), metrics
        ids = rows[:, 0].long()[keep]
        mal = malicious.to(self.device)[keep]
        ctx = RoundContext(r, self.global_params[:w], ids, generator(self.config.seed, r, "aggregate"),
                           global_params=self.global_params, malicious=mal)
        result = self.aggregator.aggregate(updates[:, :w], weights, ctx)
        # BatchNorm statistics of clients the rule rejected must not sneak in through the buffers
        kept = weights if result.accepted is None else weights * result.accepted.to(weights)
        if kept.sum() <= 0:
            kept = weights
        buffers = weighted_mean(updates[:, w:], kept) if self.layout.num_buffers else updates.new_zeros(0)
        metrics.update(result.metrics)
        all_ids = rows[:, 0].long().cpu()
        record = {"round": r, "clients": all_ids.tolist(), "malicious": all_ids[malicious].tolist(),
                  "dropped_nonfinite": rows[:, 0].long()[~keep].tolist()}
        if result.accepted is not None:
            metrics.update(detection(result.accepted.cpu(), mal.cpu()))
            record["accepted"] = ids[result.accepted.to(ids.device)].tolist()
        self.logger.log_round_record(record)
        return self.global_params + torch.cat([result.update, buffers]), metrics

    def _check_norms(self, r: int, rows: Tensor, updates: Tensor, keep: Tensor, metrics: dict) -> Tensor:
        """Reports (and with ``fed.norm_guard`` drops) updates whose norm exceeds ``norm_factor``
        times the round's median; returns the rows kept (a mask over ``rows``)."""
        w = self.layout.num_weights
        norms = torch.full((rows.shape[0],), float("nan"), device=rows.device)
        if len(updates):
            norms[keep] = torch.linalg.vector_norm(updates[:, :w], dim=1)
        finite = norms[keep]
        metrics["update_norm_max"] = float(finite.max()) if len(finite) else 0.0
        bound = self.fed.norm_factor * float(finite.median()) if len(finite) else float("inf")
        over = keep & (norms > bound)
        metrics["updates_over_bound"] = int(over.sum())
        if over.any():
            ids = rows[over, 0].long().tolist()
            action = "dropped (fed.norm_guard)" if self.fed.norm_guard else "kept (set fed.norm_guard true to drop them)"
            print(f"warning: round {r}: clients {ids} sent updates with norm > {self.fed.norm_factor:g} x the "
                  f"median ({bound:.3g}; max {metrics['update_norm_max']:.3g}); {action}", flush=True)
            if self.fed.norm_guard:
                keep = keep & ~over
        return keep

    @torch.no_grad()
    def _forward(self, weights: Tensor, x: Tensor) -> Tensor:
        """Logits of the model with trainable ``weights`` and the global buffers on raw inputs
        ``x`` (normalised here), in eval mode, on a scratch copy of the model (DeepSight)."""
        if not hasattr(self, "_scratch"):
            self._scratch = copy.deepcopy(self.model)
        w = self.layout.num_weights
        self.layout.load(self._scratch, torch.cat([weights.to(self.global_params), self.global_params[w:]]))
        return self._scratch.eval()(self.normalize(x.to(self.device)))

    # ----------------------------------------------------------------- evaluation
    def evaluate(self, params: Tensor, collective: bool = True) -> dict[str, Any]:
        """Clean ACC, loss, per-class ACC, aux ACC and ASR of ``params``. A collective: each rank
        evaluates its batches of each set (``metrics.shard_batches``: the same batches for any
        process count) and the counts are summed; the loss is summed per batch, in batch order,
        so every number is the same with 1 or N processes. ``collective=False``: this rank
        evaluates every batch alone (the same numbers; what ``PostTrainContext.evaluate`` does)."""
        rank, world = (self.fabric.global_rank, self.fabric.world_size) if collective else (0, 1)
        self.layout.load(self.model, params)
        self.model.eval()
        test, aux, n = self.data.test, self.data.aux, self.data.num_classes
        size = eval_batch_size(test.x)
        mine = shard_batches(len(test.y), size, rank, world)
        conf, batch_loss = clean_counts(self.model, test.x, test.y, self.normalize, n, batches=mine)
        nb = len(shard_batches(len(test.y), size))
        loss = torch.zeros(nb, device=conf.device)
        loss[rank::world] = batch_loss  # batch c of rank r is global batch r + c * world
        aux_conf, _ = clean_counts(self.model, aux.x, aux.y, self.normalize, n,
                                   batches=shard_batches(len(aux.y), size, rank, world))
        parts = [conf.flatten(), aux_conf.flatten(), loss]
        if self.asr_set is not None:
            x, t = self.asr_set
            parts.append(target_hits(self.model, x, t, self.normalize,
                                     batches=shard_batches(len(t), size, rank, world)))
        flat = torch.cat(parts)
        if collective:
            flat = dist.all_reduce_sum(self.fabric, flat)
        conf, aux_conf = flat[: n * n].view(n, n), flat[n * n : 2 * n * n].view(n, n)
        loss = ordered_sum(flat[2 * n * n : 2 * n * n + nb])
        out = summarize_clean(conf, loss)
        out["aux_acc"] = float(aux_conf.diagonal().sum() / aux_conf.sum()) if len(aux.y) else float("nan")
        if self.asr_set is not None:
            out["asr"] = rate(flat[2 * n * n + nb :])
        self.model.train()
        return out

    @staticmethod
    def _scalars(result: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in result.items() if k != "per_class_acc"}
        out.update({f"class_acc/{i}": a for i, a in enumerate(result.get("per_class_acc", []))})
        return out

    # ----------------------------------------------------------------- end of training
    def _finish(self) -> dict[str, Any]:
        self.trained_params = self.global_params.clone()
        # the last round was always evaluated; a run resumed with no round left evaluates now
        done, trained = self.last_eval
        if done != self.rounds:
            trained = self.evaluate(self.trained_params)
        # "trained": theta_T, the model federated training produced; "final": the model in
        # final_model.pt (a post-training defense with apply: true replaces theta_T there)
        self.summary.update({"rounds": self.rounds, "trained": trained, "num_parameters": self.layout.num_weights,
                             "train_seconds": self.train_seconds})
        self.final_eval, self.final_from = trained, "trained"
        self.save_checkpoint()  # theta_T, before any post-training defense changes the model
        self._posttrain = None  # posttrain_context() builds the defenses' context from this theta_T
        self.fabric.call("on_train_end", self.fabric, self)
        self.summary["final"] = {**self.final_eval, "model": self.final_from}
        if self.fabric.is_global_zero:
            self.save_params(self.global_params, "final_model.pt")
            self.summary.setdefault("provenance", {})["end"] = utc_now()
            _write_json(self.run_dir / "summary.json", self.summary)
            try:  # a figure must never fail a finished run
                from fedsim.curves import plot_run_curves

                self.logger.log_image("curves", plot_run_curves(self.run_dir, self.summary), self.rounds)
            except Exception as err:  # noqa: BLE001 - reported, the results are already written
                print(f"curves.png not written: {err}")
        self.logger.set_summary(_run_summary(self.summary))
        self.logger.finish()
        return self.summary

    def set_final(self, vec: Tensor, evaluation: dict[str, Any], source: str) -> None:
        """A post-training defense with ``apply: true`` makes ``vec`` the final model;
        ``evaluation`` is its ``evaluate`` result and ``source`` the defense's name."""
        self.set_global(vec)
        self.final_eval, self.final_from = evaluation, source

    def posttrain_context(self) -> PostTrainContext:
        """The frozen context every post-training defense's ``repair`` receives; built once,
        after the last round (theta_T is ``trained_params``)."""
        if getattr(self, "_posttrain", None) is None:
            aux = self.data.aux
            triggered = self.attack.test_set(aux.x, aux.y) if self.attack is not None else None
            self._posttrain = PostTrainContext(
                theta0=self.theta0, theta_t=self.trained_params, layout=self.layout, aux_x=aux.x, aux_y=aux.y,
                normalize=self.normalize, device=self.device, seed=self.config.seed, rounds=self.rounds,
                train_seconds=self.train_seconds, run_dir=self.run_dir, logger=self.logger,
                model=copy.deepcopy(self.model), evaluate=lambda vec: self.evaluate(vec, collective=False),
                triggered_aux_x=triggered[0] if triggered is not None and triggered[0].shape[0] > 0 else None)
        return self._posttrain

    # ----------------------------------------------------------------- helpers for callbacks
    def broadcast(self, tensor: Tensor) -> Tensor:
        return dist.broadcast(self.fabric, tensor.to(self.device))

    def set_global(self, vec: Tensor) -> None:
        self.global_params = vec.to(self.device)

    def save_params(self, vec: Tensor, filename: str) -> Path:
        state = {"params": vec.cpu(), "theta0": self.theta0.cpu(), "names": [e.name for e in self.layout.entries]}
        return save_atomic(state, self.run_dir / filename)

    def save_checkpoint(self) -> None:
        """Rank 0: the run's state at this round (schema: ``fedsim.runtime.checkpoint``)."""
        if not self.fabric.is_global_zero:
            return
        state = checkpoint_state(
            global_params=self.global_params, theta0=self.theta0, prev_global=self.prev_global, round=self.rounds,
            aggregator=self.aggregator.state_dict(),
            attack=self.attack.state_dict() if self.attack is not None else {}, wandb_id=self.logger.wandb_id,
            seed=self.config.seed, train_seconds=self.train_seconds, fingerprint=self.config.fingerprint)
        save_atomic(state, self.run_dir / "checkpoints" / "last.ckpt")


def _run_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The W&B run summary: the final model's ACC / ASR / aux ACC under their plain names, the
    trained model's under ``trained/``, and each post-training defense's scalars under its name."""
    out: dict[str, Any] = {}
    for prefix, block in (("", summary.get("final", {})), ("trained/", summary.get("trained", {}))):
        out.update({f"{prefix}{k}": v for k, v in block.items() if k != "per_class_acc" and isinstance(v, (int, float))})
    out["final_model"] = summary.get("final", {}).get("model", "trained")
    return out


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    tmp.replace(path)


def _progress(fabric, start: int, total: int):
    if not fabric.is_global_zero or start >= total:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="rounds", dynamic_ncols=True)


def _advance(bar, metrics: dict[str, Any]) -> None:
    if bar is None:
        return
    shown = {k: f"{metrics[k]:.4f}" for k in ("acc", "asr") if k in metrics}
    bar.set_postfix(shown)
    bar.update(1)
