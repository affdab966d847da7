"""End-to-end training (``train.py --no-fixed_features``): clips are decoded (and augmented) in worker processes,
HRNet and CSN run inside the step, fine-tuned with their own learning rate or frozen, and the MLP head trains on
their features joined with the tiers that stay pre-computed (raw unless computed on the fly, similarity, text,
imported features: read from their stores through ``FeatureTable``).

GPU-first: autocast in bf16 where the GPU has it, else fp16 with loss scaling (``GradScaler``), after checking the
reduced-precision backbone features against fp32 (cosine >= ``MIN_COSINE``, else fp32 with a warning); HRNet in
channels-last memory; ``DistributedDataParallel`` under ``torchrun`` (nccl on GPUs, gloo on CPUs);
``--grad_accumulation`` steps per process per batch. ``--batch_size`` is the global batch (the paper's 32): split
over processes and accumulation steps, each micro-batch's loss weighted by its share of the batch, so the update
is the same as one process taking the whole batch (batch-level losses, such as spearman, see micro-batches).

A resumed run continues exactly: the batch order comes from a seeded generator saved in the checkpoint, the
augmentation from (seed, epoch, clip) alone, and the head, fine-tuned backbones, optimiser, schedule and loss scaler
are restored. Checkpoints hold the backbone weights only when they were fine-tuned (frozen ones are the official
files); evaluation (``evaluate.py``) runs the same network.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from config import TrainConfig
from core.device import available_cores
from core.io import ConfigError
from core.rundir import free_run_name
from dataset import load_records
from features.extract import Dist, device_for
from model.e2e import EndToEndModel
from model.losses import LOSSES, LossContext
from model.metrics import compute_metrics
from pipeline.e2e.backbones import MIN_COSINE, autocast_dtype, build_backbones, deep_backbones, precision_agrees
from pipeline.e2e.clips import make_loader, micro_batches
from pipeline.e2e.data import E2EData, build_data
from pipeline.run import loop
from pipeline.run.checkpoint import build_checkpoint, check_sources, load_weights, stats_from_checkpoint
from pipeline.run.logger import RunLogger, fetch_wandb_checkpoint
from pipeline.run.loop import Engine, Track
from pipeline.run.training import (
    Interrupted,
    input_notes,
    interrupted_message,
    make_optimizer,
    make_scheduler,
    resolve_resume,
    seed_everything,
)
from tiers import module_tiers

BACKBONE_LR_FRACTION = 0.01  # default --backbone_lr = --lr / 100: pretrained weights move slowly, the new head fast


class EndToEndTrainer(Engine):
    """Trains an ``EndToEndModel`` over decoded clips (the step engine of an end-to-end run, driven by
    ``pipeline.run.loop``); see the module docstring."""

    def __init__(
        self,
        cfg: TrainConfig,
        data: E2EData,
        device: torch.device,
        dist: Dist,
        resume: dict | None = None,
        train_mean: float | None = None,
    ) -> None:
        """``train_mean`` (for the losses) defaults to the mean score of the train split (needed when it is absent)."""
        self.cfg, self.data, self.device, self.dist = cfg, data, device, dist
        seed_everything(cfg.seed)  # set: build_data has drawn the augmentation seed from it
        backbones = build_backbones(cfg)
        dims = {m: backbones[m].out_channels if m in backbones else data.dims[m] for m in cfg.modules()}
        model = EndToEndModel(
            backbones, dims, cfg.hidden_channels, cfg.hrnet_frames, cfg.freeze_backbones, cfg.grad_checkpointing
        )
        self.model = model.to(device)
        if device.type == "cuda":
            self.model.use_channels_last()
            torch.backends.cudnn.benchmark = True  # fixed clip shapes: let cuDNN pick its fastest kernels
        self.net: nn.Module = self.model
        if dist.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device] if device.type == "cuda" else None
            )
        groups = [{"params": list(self.model.head.parameters()), "lr": cfg.lr}]
        if not cfg.freeze_backbones and backbones:
            lr = cfg.backbone_lr if cfg.backbone_lr is not None else cfg.lr * BACKBONE_LR_FRACTION
            groups.append({"params": self.model.trainable_backbone_parameters(), "lr": lr})
        self.opt = make_optimizer(cfg, groups)
        self.sched = make_scheduler(cfg, self.opt)
        self.dtype = autocast_dtype(device, cfg.deep_dtype)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.loss_fn = LOSSES[cfg.loss]
        if train_mean is None:
            train_mean = float(data.splits["train"].y.double().mean())
        self.ctx = LossContext(0, cfg.epochs, train_mean, cfg.mse_tails_pow, cfg.mse_tails_mult_fact)
        workers = cfg.workers if cfg.workers >= 0 else max(1, available_cores() // max(dist.local_world, 1))
        self.samplers: dict[str, list] = {s: [] for s in data.splits}  # each loader's batches, set in place
        self.loaders = {
            s: make_loader(ds, self.samplers[s], workers, cfg.prefetch, device.type == "cuda")
            for s, ds in data.datasets.items()
        }
        self.track = Track()  # history; the best epoch's row and val predictions (best.pt holds its weights)
        self.start_epoch = 0
        self.wait_s = 0.0  # time the last epoch's step spent waiting for clips
        if resume is not None:
            self._restore(resume)

    # ----------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        """The checkpoint of the epoch last recorded (``weights_only`` loadable), with the fine-tuned backbones."""
        cfg, data, t = self.cfg, self.data, self.track
        best_pred = None if t.best_pred is None else torch.from_numpy(t.best_pred.copy())
        resume = {} if cfg.freeze_backbones else {"backbones": self._cpu(self.model.backbones)}
        return build_checkpoint(
            cfg, cfg.modules(), self.model.dims, data.stats, data.sources, data.fitted, t.history,
            self._cpu(self.model.head), self.ctx.train_mean, t.best, best_pred=best_pred,
            end_to_end=deep_backbones(cfg), optimizer=self.opt.state_dict(), scheduler=self.sched.state_dict(),
            scaler=self.scaler.state_dict(), rng={"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state()},
            **resume,
        )  # fmt: skip

    @staticmethod
    def _cpu(module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}

    def load_weights(self, ckpt: dict) -> None:
        """The head and, when they were fine-tuned, the backbones of a checkpoint."""
        if ckpt["dims"] != self.model.dims:
            raise ConfigError(f"checkpoint dims {ckpt['dims']} differ from this run's {self.model.dims}")
        load_weights(self.model.head, ckpt["model"])
        if "backbones" in ckpt:
            self.model.backbones.load_state_dict(ckpt["backbones"])

    def _restore(self, ckpt: dict) -> None:
        self.load_weights(ckpt)
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        if "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.shuffle.set_state(ckpt["rng"]["shuffle"])
        best_pred = ckpt.get("best_pred")
        self.track = Track(list(ckpt["history"]), ckpt["best"], None if best_pred is None else best_pred.numpy())
        self.start_epoch = ckpt["epoch"] + 1

    # ----------------------------------------------------------------- steps
    def _inputs(self, split: str, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Clips on the device, the pre-computed / on-the-fly modules ``{module: (B, D)}``, the targets (B,)."""
        idx = batch["index"]
        clips = batch["frames"].to(self.device, non_blocking=True) if "frames" in batch else None
        pre = self.data.inputs(split, idx, batch.get("raw"), self.device)
        return clips, pre, self.data.splits[split].y[idx.to(self.data.splits[split].y.device)].to(self.device)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def check_precision(self) -> None:
        """Reduced precision only if the backbones' features agree with fp32 on a validation batch."""
        if self.dtype == torch.float32 or not self.model.backbones:
            return
        split = "val" if "val" in self.data.splits else next(iter(self.data.splits))
        self.samplers[split][:] = [[(i, 0, False) for i in range(min(2, len(self.data.splits[split].y)))]]
        clips, _, _ = self._inputs(split, next(iter(self.loaders[split])))
        self.model.eval()
        cos = precision_agrees(self.model, clips, self.dtype)
        if cos < MIN_COSINE:
            warnings.warn(
                f"{self.dtype} backbone features differ from fp32 (cosine {cos:.4f}); training in fp32", stacklevel=2
            )
            self.dtype, self.scaler = torch.float32, torch.amp.GradScaler(self.device.type, enabled=False)

    def _order(self, epoch: int) -> tuple[list[list[tuple[int, int, bool]]], list[int]]:
        """This process's micro-batches of the epoch and the size of every global batch."""
        cfg, n = self.cfg, len(self.data.splits["train"].y)
        order = torch.randperm(n, generator=self.shuffle).tolist()
        world, accum = self.dist.world, cfg.grad_accumulation
        mine = micro_batches(order, cfg.batch_size, world, self.dist.rank, accum)
        sizes = [min(cfg.batch_size, n - s) for s in range(0, n, cfg.batch_size)][: len(mine) // accum]
        if not mine:
            raise ConfigError(f"{n} training clips cannot fill one step of {world} process(es) x {accum} accumulation")
        return [[(i, epoch, cfg.data_augmentation) for i in b] for b in mine], sizes

    def train_epoch(self, epoch: int) -> float:
        self.model.train()
        self.ctx.epoch = epoch
        batches, sizes = self._order(epoch)
        self.samplers["train"][:] = batches
        accum, world = self.cfg.grad_accumulation, self.dist.world
        total = torch.zeros(2, dtype=torch.float64)
        self.wait_s, t = 0.0, time.perf_counter()
        for i, batch in enumerate(self.loaders["train"]):
            self.wait_s += time.perf_counter() - t
            step, micro = divmod(i, accum)
            last = micro == accum - 1
            clips, pre, y = self._inputs("train", batch)
            sync = contextlib.nullcontext() if last or world == 1 else self.net.no_sync()
            with sync:
                with self._autocast():
                    pred = self.net(clips, pre)
                loss = self.loss_fn(pred.float(), y, self.ctx)
                # weighted by its share of the global batch; DDP averages over processes, hence x world
                self.scaler.scale(loss * (len(y) * world / sizes[step])).backward()
            total += torch.tensor([float(loss.detach()) * len(y), len(y)], dtype=torch.float64)
            if last:
                self.scaler.step(self.opt)
                self.scaler.update()
                self.opt.zero_grad(set_to_none=True)
            t = time.perf_counter()
        self.sched.step()
        if world > 1:
            torch.distributed.all_reduce(total)
        return float(total[0] / total[1])

    @torch.inference_mode()
    def predict(self, split: str) -> np.ndarray:
        """Predictions for every clip of ``split``, in its order (each process scores a share, then all gather)."""
        self.model.eval()
        n = len(self.data.splits[split].y)
        mine = list(range(n))[self.dist.rank :: self.dist.world]
        per = max(1, self.cfg.batch_size // (self.cfg.grad_accumulation * self.dist.world))
        self.samplers[split][:] = [[(i, 0, False) for i in mine[s : s + per]] for s in range(0, len(mine), per)]
        out = np.zeros(n, dtype=np.float32)
        got: list[tuple[list[int], list[float]]] = []
        for batch in self.loaders[split]:
            clips, pre, _ = self._inputs(split, batch)
            with self._autocast():
                pred = self.model(clips, pre)
            got.append((batch["index"].tolist(), pred.float().cpu().tolist()))
        for part in self.dist.gather(got):
            for idx, pred in part:
                out[idx] = pred
        return out

    # ----------------------------------------------------------------- the engine of pipeline.run.loop
    def lrs(self) -> dict[str, float]:
        lrs = [g["lr"] for g in self.opt.param_groups]
        return {"lr": lrs[0]} | ({"backbone_lr": lrs[1]} if len(lrs) > 1 else {})

    def step_epoch(self, epoch: int) -> list[float]:
        return [self.train_epoch(epoch)]

    def row_extras(self, train_seconds: float) -> dict:
        return {"train_seconds": train_seconds, "data_wait_seconds": self.wait_s}

    def score_val(self) -> list[tuple[dict, np.ndarray]]:
        pred = self.predict("val")
        y = self.data.splits["val"].y.cpu()
        metrics = compute_metrics(pred, y.numpy())
        with torch.no_grad():
            metrics["loss"] = float(self.loss_fn(torch.from_numpy(pred), y, self.ctx))
        return [(metrics, pred)]

    def weights(self, run: int) -> dict[str, torch.Tensor]:
        return self._cpu(self.model.head)  # the head (best.pt, written each improving epoch, holds the backbones)

    def fit(self, logger: RunLogger | None) -> dict:
        """Train to ``cfg.epochs``; returns ``{"best": ..., "last": ...}`` (epoch and val metrics of each).
        ``logger`` is None in the processes other than rank 0: they train, rank 0 writes."""
        cfg, val = self.cfg, self.data.splits["val"]
        true = val.y.cpu().numpy()

        def epoch_done(epoch: int, rows: list[dict], improved: list[bool]) -> None:
            logger.epoch(rows[0], self.track.last_pred, true)
            if cfg.save or cfg.log:
                logger.checkpoint(self.state(), improved[0])

        hook, progress = (epoch_done, cfg.loss) if logger is not None else (None, None)
        loop.fit(self, [self.track], cfg.epochs, self.start_epoch, hook, progress)
        last_pred = self.track.last_pred
        if last_pred is None:  # resumed at or past the last epoch (every process scores: predict gathers)
            last_pred = self.score_val()[0][1]
        if logger is not None:
            best_pred = self.track.best_pred if self.track.best_pred is not None else last_pred
            logger.finish(self.track.history, self.track.best, val, best_pred, last_pred)
        return {"best": self.track.best, "last": self.track.history[-1]}


def resumes_end_to_end(cfg: TrainConfig) -> bool:
    """Whether the checkpoint to resume from is an end-to-end one (read lazily: its tensors stay on disk)."""
    path = cfg.checkpoint_local
    if cfg.checkpoint_run_id and not path:  # wandb keeps the download: resolve_resume finds it there again
        path = str(fetch_wandb_checkpoint(cfg.checkpoint_run_id, cfg.checkpoint_epoch, cfg.project))
    if not path or not os.path.isfile(path):
        return False
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint: resolve_resume gives the clear error
        return False
    return isinstance(ckpt, dict) and "end_to_end" in ckpt


def run_end_to_end(cfg: TrainConfig, explicit: dict | None = None) -> dict:
    """What ``train.py --no-fixed_features`` does, in every ``torchrun`` process: resolve, train, write (rank 0)."""
    cfg, ckpt = resolve_resume(cfg, explicit or {})
    cfg.check()
    if cfg.fixed_features:
        raise ConfigError("run_end_to_end needs --no-fixed_features")
    dist = Dist.from_env()
    device = device_for(cfg.device, dist)
    if dist.world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # on a GPU the cores decode (--workers); on a CPU the step's convolutions take them
    cores = max(1, available_cores() // max(dist.local_world, 1))
    torch.set_num_threads(cfg.threads or (2 if device.type == "cuda" else cores))
    if cfg.seed is None:  # every process must draw the same seed
        cfg.seed = dist.gather(int.from_bytes(os.urandom(4), "little"))[0]
    records = load_records(cfg.dataset, cfg)
    data = build_data(cfg, records, device, stats=stats_from_checkpoint(ckpt) if ckpt else None)
    if ckpt:
        check_sources(ckpt["sources"], data.sources)
    if not cfg.name:
        cfg.name = f"{cfg.dataset}_{'+'.join(cfg.modules())}_e2e_{time.strftime('%Y%m%d-%H%M%S')}"
    if not ckpt:  # rank 0 picks a free run directory for everyone
        cfg.name = dist.gather(free_run_name(Path(cfg.runs_dir), cfg.name) if dist.rank == 0 else "")[0]
    trainer = EndToEndTrainer(cfg, data, device, dist, resume=ckpt)
    trainer.check_precision()
    if dist.rank == 0:
        n = {s: len(d.y) for s, d in data.splits.items()}
        tiers = ", ".join(f"{m} ({t.name})" for m, t in module_tiers(cfg).items())
        print(
            f"{cfg.dataset}: {n} videos; end to end over {tiers}, dims {trainer.model.dims}; device {device} x "
            f"{dist.world}; {trainer.dtype}; backbones {'frozen' if cfg.freeze_backbones else 'fine-tuned'}; "
            f"seed {cfg.seed}"
        )
    notes = input_notes(cfg, data.sources, records) if dist.rank == 0 else {}
    if dist.rank == 0 and (cfg.standin_backbones or cfg.smoke_random_weights):
        print("warning: the backbones have RANDOM weights (--standin_backbones / --smoke_random_weights): a "
              "pipeline check, its scores measure nothing")  # fmt: skip
        notes["random_backbones"] = True
    try:
        if dist.rank:  # the others train; rank 0 writes the run directory (Ctrl-C / SIGTERM: where to resume from)
            return trainer.fit(None) | {"run_dir": ""}
        with RunLogger(cfg, resume_epoch=trainer.start_epoch) as logger:
            logger.notes |= notes
            try:
                result = trainer.fit(logger)
            except KeyboardInterrupt:
                raise Interrupted(interrupted_message(logger.run_dir)) from None
        return result | {"run_dir": str(logger.run_dir)}
    finally:
        dist.close()


def evaluate_end_to_end(
    ckpt: dict, train_cfg: TrainConfig, splits: tuple[str, ...], device_name: str, records: list
) -> dict:
    """``{split: (ids, true scores with NaN where unknown, predictions)}`` of ``records`` by an end-to-end checkpoint:
    its head and fine-tuned backbones (frozen ones from the official files) over the decoded clips, one process."""
    dist = Dist()
    device = device_for(device_name, dist)
    torch.set_num_threads(available_cores())
    data = build_data(train_cfg, records, device, stats_from_checkpoint(ckpt), splits, scored_only=False)
    check_sources(ckpt["sources"], data.sources)
    if not data.splits:
        raise ConfigError(f"{train_cfg.dataset} has no videos in split(s) {', '.join(splits)}")
    trainer = EndToEndTrainer(train_cfg, data, device, dist, train_mean=ckpt["train_mean"])
    trainer.load_weights(ckpt)
    trainer.check_precision()
    return {s: (d.ids, d.y.cpu().numpy(), trainer.predict(s)) for s, d in data.splits.items()}
