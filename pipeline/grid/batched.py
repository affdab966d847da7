"""Many trainings at once: every (seed, fold, module combination) of a grid is one slice of a batched MLP.

Each run is exactly the ``ModularMLP`` that ``train.py`` would train with the same seed and modules:

- **initialisation**: each run's network is built by ``ModularMLP`` itself after ``seed_everything(seed)``, as the
  ordinary ``Trainer`` does, and its weights are copied into the stacked tensors;
- **input modules**: runs sharing a batch order (same seed and fold) form a ``Bundle``; its first layer is kept per
  module, ``w1[m]`` of shape (D_m, k_m * H1) over the k_m runs that use module m. A run's first layer is the sum of
  its own modules' blocks, so a run without module m has no weights for it at all: exactly a smaller first layer,
  not a zero-masked input;
- **shuffling**: each run draws its batches from its own generator seeded like the ``Trainer``'s; a bundle's runs
  share that order, so their batch is gathered once and multiplied by all their weights in one GEMM;
- **optimiser and schedule**: every run of a grid shares the config's hyper-parameters and steps on every batch, and
  Adam, AdamW and SGD update each element from its own gradient and state only, so torch's fused optimiser over the
  stacked tensors *is* the per-run update (own moments, own momentum buffers), with the config's own schedule.

Runs train in lockstep when their folds have the same number of training videos (the same steps an epoch); a grid
whose folds differ by one video trains as two such groups. On a GPU a group is one lockstep model; on a CPU it is cut
into cache-sized chunks trained one after another (``CPU_CHUNK_PARAMS``). Results equal sequential runs up to float
summation order (``tests/test_experiments.py`` measures the difference).
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from config import TrainConfig
from core.io import ConfigError
from model.losses import LOSSES, LossContext
from model.metrics import compute_metrics
from model.mlp import ModularMLP
from pipeline.grid.specs import FoldData, RunResult, RunSpec
from pipeline.run import loop
from pipeline.run.checkpoint import save_checkpoint
from pipeline.run.loop import Engine, Track
from pipeline.run.training import make_optimizer, make_scheduler, seed_everything

# --------------------------------------------------------------------------- the stacked model


#: Layers of ModularMLP that act on each value alone, so the same module applies to every stacked run at once.
ELEMENTWISE = (torch.nn.Mish, torch.nn.ReLU, torch.nn.GELU, torch.nn.SiLU, torch.nn.Tanh, torch.nn.Identity)


def _stackable(net: ModularMLP) -> tuple[list[torch.nn.Linear], list[torch.nn.Module]]:
    """``net``'s linear layers and the element-wise activations between them, read from the model itself: a layer the
    stacked runs could not reproduce exactly (dropout, a norm, another order) is refused here, never approximated."""
    layers = list(net.net)
    linears, acts = layers[0::2], layers[1::2]
    ok = len(linears) == len(acts) + 1 and all(isinstance(layer, torch.nn.Linear) for layer in linears)
    if not ok or not all(isinstance(a, ELEMENTWISE) for a in acts):
        kinds = ", ".join(type(layer).__name__ for layer in layers)
        raise NotImplementedError(
            f"the batched grid stacks Linear layers with element-wise activations between them; ModularMLP is now "
            f"{kinds}: teach pipeline/grid/batched.py that layer, or train the grid with --no-batched"
        )
    return linears, acts


class Bundle:
    """The runs sharing one batch order (same seed and fold), as stacked leaf tensors of their own: ``w1[m]`` is
    (D_m, k_m * H1) over the k_m runs that use module m, side by side, so one GEMM serves them all; the later layers
    are (k, in, out). Bundles share no tensor, so no gradient ever flows through a view of a bigger weight."""

    def __init__(self, runs: list[RunSpec], dims: dict[str, int], hidden: list[int], device: torch.device) -> None:
        self.runs, self.dims, self.hidden = runs, dims, list(hidden)
        self.members = {m: [r for r, s in enumerate(runs) if m in s.modules] for m in dims}
        self.members = {m: rs for m, rs in self.members.items() if rs}
        self.local = {m: torch.tensor(rs, device=device) for m, rs in self.members.items()}
        h1, widths, k = hidden[0], [*hidden, 1], len(runs)
        w1 = {m: torch.zeros(dims[m], len(rs), h1) for m, rs in self.members.items()}
        self.b1 = torch.zeros(k, h1)
        self.ws = [torch.zeros(k, i, o) for i, o in zip(widths[:-1], widths[1:], strict=True)]
        self.bs = [torch.zeros(k, o) for o in widths[1:]]
        for r, spec in enumerate(runs):
            seed_everything(spec.seed)  # then ModularMLP draws its initialisation, as the Trainer's does
            net = ModularMLP({m: dims[m] for m in spec.modules}, hidden)
            linears, self.activations = _stackable(net)
            first, col = linears[0].weight.detach(), 0  # (H1, D_run)
            for m in spec.modules:
                w1[m][:, self.members[m].index(r)] = first[:, col : col + dims[m]].T
                col += dims[m]
            self.b1[r] = linears[0].bias.detach()
            for layer, w, b in zip(linears[1:], self.ws, self.bs, strict=True):
                w[r], b[r] = layer.weight.detach().T, layer.bias.detach()
        self.w1 = {m: w.reshape(dims[m], -1) for m, w in w1.items()}  # (D_m, k_m * H1)
        for t in self.parameters():
            t.data = t.data.to(device)
            t.requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        return [*self.w1.values(), self.b1, *self.ws, *self.bs]

    def forward(self, xs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Every run of the bundle on the same inputs ``xs`` (module -> (N, D_m)); returns (k, N) scores in [0, 1]."""
        n, k = next(iter(xs.values())).shape[0], len(self.runs)
        h = None
        for m, rs in self.members.items():
            y = (xs[m] @ self.w1[m]).view(n, len(rs), -1).transpose(0, 1)  # (k_m, N, H1)
            if len(rs) < k:
                y = torch.zeros(k, n, self.hidden[0], device=y.device, dtype=y.dtype).index_add(0, self.local[m], y)
            h = y if h is None else h + y
        h = self.activations[0](h + self.b1[:, None])
        for i, (w, bias) in enumerate(zip(self.ws, self.bs, strict=True)):
            h = torch.baddbmm(bias[:, None], h, w)  # (k, N, out)
            if i < len(self.ws) - 1:
                h = self.activations[i + 1](h)
        return ModularMLP.squash(h).squeeze(-1)

    def state_dict(self, r: int) -> dict[str, torch.Tensor]:
        """Run ``r`` as a ``ModularMLP`` state dict (its own modules' columns only)."""
        spec, h1 = self.runs[r], self.hidden[0]
        cols = [self.w1[m].view(self.dims[m], -1, h1)[:, self.members[m].index(r)] for m in spec.modules]
        out = {"net.0.weight": torch.cat(cols).T, "net.0.bias": self.b1[r]}  # (H1, D_run)
        for i, (w, b) in enumerate(zip(self.ws, self.bs, strict=True)):
            out[f"net.{2 * i + 2}.weight"], out[f"net.{2 * i + 2}.bias"] = w[r].T, b[r]
        return {k: v.detach().cpu().clone().contiguous() for k, v in out.items()}


# --------------------------------------------------------------------------- training

EpochCallback = Callable[[int, list[dict]], bool]  # (epoch, one val row per run) -> stop now
DoneCallback = Callable[[list[RunResult]], None]  # finished runs, as soon as they finish


class _Group(Engine):
    """Runs whose folds have the same number of training videos (the same steps an epoch), trained together: one
    bundle per batch order, one optimiser and schedule over every bundle's tensors (the step engine of a grid,
    driven by ``pipeline.run.loop``)."""

    def __init__(self, cfg: TrainConfig, runs: list[RunSpec], folds: list[FoldData], dims: dict, device) -> None:
        self.cfg, self.runs, self.folds, self.device, self.n_runs = cfg, runs, folds, device, len(runs)
        orders = itertools.groupby(runs, lambda s: (s.fold, s.seed))  # neighbours sharing a batch order, in run order
        self.bundles = [Bundle(list(rs), dims, cfg.hidden_channels, device) for _, rs in orders]
        self.where = [(b, local) for b, bundle in enumerate(self.bundles) for local in range(len(bundle.runs))]
        self.opt = make_optimizer(cfg, [t for b in self.bundles for t in b.parameters()])
        self.sched = make_scheduler(cfg, self.opt)
        self.gens = [torch.Generator().manual_seed(b.runs[0].seed) for b in self.bundles]  # as the Trainer's
        # model.losses over (k, B): one loss per run; each bundle's context holds its fold's train mean, (1, 1)
        means = [torch.tensor([[float(self._fold(b).y_train.double().mean())]], device=device) for b in self.bundles]
        self.ctxs = [LossContext(0, cfg.epochs, m, cfg.mse_tails_pow, cfg.mse_tails_mult_fact) for m in means]
        self.loss = LOSSES[cfg.loss]
        self.n = len(folds[runs[0].fold].y_train)

    def _fold(self, bundle: Bundle) -> FoldData:
        return self.folds[bundle.runs[0].fold]

    def step_epoch(self, epoch: int) -> list[float]:
        for ctx in self.ctxs:
            ctx.epoch = epoch
        orders = [torch.randperm(self.n, generator=g).to(self.device) for g in self.gens]
        totals = [torch.zeros(len(b.runs), device=self.device) for b in self.bundles]
        for start in range(0, self.n, self.cfg.batch_size):
            losses = []
            for bundle, order, ctx in zip(self.bundles, orders, self.ctxs, strict=True):
                fold = self._fold(bundle)
                idx = order[start : start + self.cfg.batch_size]
                pred = bundle.forward({m: fold.x_train[m][idx] for m in bundle.members})  # gathered once per order
                target = fold.y_train[idx].expand(len(bundle.runs), -1)
                losses.append(self.loss(pred, target, ctx))  # (k,)
            self.opt.zero_grad(set_to_none=True)
            torch.cat(losses).sum().backward()  # runs share no weights: each run's gradient is its own loss's
            self.opt.step()
            for total, loss in zip(totals, losses, strict=True):
                total += loss.detach() * len(idx)
        self.sched.step()
        return [loss for t in totals for loss in (t / self.n).tolist()]  # the bundles hold the runs in order

    @torch.inference_mode()
    def score_val(self) -> list[tuple[dict, np.ndarray]]:
        scored = []
        for bundle, ctx in zip(self.bundles, self.ctxs, strict=True):
            fold = self._fold(bundle)
            pred = bundle.forward({m: fold.x_val[m] for m in bundle.members})  # (k, N_val)
            losses = self.loss(pred, fold.y_val.expand(len(bundle.runs), -1), ctx)
            true = fold.y_val.cpu().numpy()
            for p, loss in zip(pred.float().cpu().numpy(), losses.tolist(), strict=True):
                scored.append((compute_metrics(p, true) | {"loss": loss}, p))
        return scored

    def weights(self, run: int) -> dict[str, torch.Tensor]:
        bundle, local = self.where[run]
        return self.bundles[bundle].state_dict(local)

    def fit(self, on_epoch: EpochCallback | None, saved: Path | None = None) -> list[RunResult]:
        """Train the group's runs; with ``saved`` (a file), resume from it when it holds these runs, and write it as
        the epochs go (every ``CHUNK_SAVE_SECONDS``), so that a kill loses at most that much of the chunk."""
        tracks, start = [Track() for _ in self.runs], 0
        if saved is not None and saved.is_file():
            tracks, start = self.restore(saved)
            print(f"{len(self.runs)} runs resume from epoch {start + 1}, as saved in {saved}", flush=True)
        last_save = time.monotonic()

        def epoch_done(epoch: int, rows: list[dict], improved: list[bool]) -> bool:
            nonlocal last_save
            if saved is not None and time.monotonic() - last_save >= CHUNK_SAVE_SECONDS:
                save_checkpoint(self.state(tracks, epoch), saved)
                last_save = time.monotonic()
            return on_epoch is not None and on_epoch(epoch, rows)

        loop.fit(self, tracks, self.cfg.epochs, start, epoch_done, keep_best_weights=self.cfg.save)
        return [
            RunResult(spec, t.history, t.best, t.best_pred, t.last_pred, self.weights(i), t.best_weights)
            for i, (spec, t) in enumerate(zip(self.runs, tracks, strict=True))
        ]

    # ----------------------------------------------------------------- an unfinished chunk on disk
    def key(self) -> str:
        """Which runs this group trains (the grid's directory already pins its configuration)."""
        return hashlib.sha1(repr([(s.seed, s.fold, s.modules, s.head) for s in self.runs]).encode()).hexdigest()[:16]

    def state(self, tracks: list[Track], epoch: int) -> dict:
        """Everything the next epoch needs (tensors and plain values: ``weights_only`` loads it)."""
        arrays = ("best_pred", "last_pred")
        return {
            "key": self.key(), "epoch": epoch,
            "params": [t.detach().cpu().clone() for b in self.bundles for t in b.parameters()],
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "shuffle": [g.get_state() for g in self.gens],
            "tracks": [vars(t) | {a: torch.from_numpy(getattr(t, a).copy()) for a in arrays} for t in tracks],
        }  # fmt: skip

    def restore(self, path: Path) -> tuple[list[Track], int]:
        """Load the chunk saved at ``path`` into this group; its runs' tracks and the epoch to go on from."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # written atomically, so only another program's file or a damaged disk lands here
            raise ConfigError(
                f"{path} cannot be read ({type(err).__name__}); delete it to train its chunk afresh"
            ) from None
        if state.get("key") != self.key():
            raise ConfigError("the saved unfinished chunk holds other runs; delete it to train this chunk afresh")
        with torch.no_grad():
            for t, saved in zip((t for b in self.bundles for t in b.parameters()), state["params"], strict=True):
                t.copy_(saved)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        for g, saved in zip(self.gens, state["shuffle"], strict=True):
            g.set_state(saved)
        tracks = [Track(**(t | {a: t[a].numpy() for a in ("best_pred", "last_pred")})) for t in state["tracks"]]
        return tracks, state["epoch"] + 1


#: How often a grid trained with -s saves its chunk in training (seconds): a kill loses at most this much of it.
CHUNK_SAVE_SECONDS = 60.0

#: On a CPU, runs train in chunks of at most this many parameters, one chunk after another: a chunk's weights,
#: gradients and Adam moments (about 64 MB) stay in cache from step to step, where one lockstep grid of every run
#: streams all of them from memory on every step (measured on the 45-run paper grid, 2-core CPU: slower than
#: sequential runs). On a GPU the whole grid trains in lockstep.
CPU_CHUNK_PARAMS = 4_000_000


def run_params(spec: RunSpec, dims: dict[str, int], hidden: list[int]) -> int:
    widths = [sum(dims[m] for m in spec.modules), *hidden, 1]
    return sum((i + 1) * o for i, o in zip(widths[:-1], widths[1:], strict=True))


def chunks(runs: list[int], specs: list[RunSpec], dims: dict, hidden: list[int], budget: float) -> list[list[int]]:
    """Consecutive runs (ordered by fold and seed, so chunks keep shared batch orders together) packed up to
    ``budget`` parameters; a run larger than the budget is a chunk of its own."""
    order = sorted(runs, key=lambda i: (specs[i].fold, specs[i].seed))
    out: list[list[int]] = []
    size = 0.0
    for i in order:
        n = run_params(specs[i], dims, hidden)
        if not out or size + n > budget:
            out.append([])
            size = 0.0
        out[-1].append(i)
        size += n
    return out


def train_batched(
    cfg: TrainConfig,
    runs: list[RunSpec],
    folds: list[FoldData],
    dims: dict[str, int],
    device: torch.device,
    on_epoch: EpochCallback | None = None,
    on_done: DoneCallback | None = None,
    save_dir: Path | None = None,
) -> list[RunResult]:
    """Train every run of ``runs`` together (on a CPU, in cache-sized chunks); results in the order of ``runs``.
    ``on_done(results)`` is called as each chunk finishes (a grid writes and reports its runs there). With
    ``save_dir``, the chunk in training is saved there as it goes (``chunk-<key>.pt``) and resumed from it by the next
    call with the same runs; it is removed once ``on_done`` has kept its runs."""
    budget = CPU_CHUNK_PARAMS if device.type == "cpu" else float("inf")
    out: dict[int, RunResult] = {}
    for size in sorted({len(folds[s.fold].y_train) for s in runs}):
        members = [i for i, s in enumerate(runs) if len(folds[s.fold].y_train) == size]
        for chunk in chunks(members, runs, dims, cfg.hidden_channels, budget):
            group = _Group(cfg, [runs[i] for i in chunk], folds, dims, device)
            saved = save_dir / f"chunk-{group.key()}.pt" if save_dir is not None else None
            done = group.fit(on_epoch, saved=saved)
            out |= dict(zip(chunk, done, strict=True))
            if on_done is not None:
                on_done(done)
            if saved is not None:
                saved.unlink(missing_ok=True)
    return [out[i] for i in range(len(runs))]
